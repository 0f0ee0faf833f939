//! File modes of the agent's state: the root is `0700`, and everything in
//! the cache is for root alone (`0600` files, `0700` directories). Tenants'
//! reservations, results and the node key live there.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use tracing::warn;

use crate::AgentError;

/// Create `root` with mode 0700, or tighten an existing one to 0700 (with
/// a warning naming the old mode).
pub fn private_root(root: &Path) -> Result<(), AgentError> {
    let err = |reason: String| AgentError::Config {
        path: root.display().to_string(),
        reason,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| err(format!("cannot create the root directory: {e}")))?;
    let mode = fs::metadata(root)
        .map_err(|e| err(format!("cannot read the root directory: {e}")))?
        .permissions()
        .mode()
        & 0o777;
    if mode != 0o700 {
        warn!(root = %root.display(), mode = %format!("{mode:o}"), "the root directory was open to others; setting mode 700");
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(|e| err(format!("cannot set mode 700: {e}")))?;
    }
    Ok(())
}

/// Make every file under `dir` 0600 and every directory 0700. Best effort:
/// a failure is logged, the agent goes on.
pub fn private_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    set_mode(dir, 0o700);
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => private_tree(&p),
            Ok(t) if t.is_file() => set_mode(&p, 0o600),
            _ => {}
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    let current = fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    if current.is_ok_and(|m| m != mode) {
        if let Err(e) = fs::set_permissions(p, fs::Permissions::from_mode(mode)) {
            warn!(path = %p.display(), error = %e, "cannot make it private");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn root_is_created_or_tightened_to_0700() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/root");
        private_root(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        private_root(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    #[test]
    fn cache_files_become_0600() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("snap");
        fs::create_dir(&sub).unwrap();
        fs::write(dir.path().join("db"), b"x").unwrap();
        fs::write(sub.join("blob"), b"x").unwrap();
        fs::set_permissions(dir.path().join("db"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(sub.join("blob"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        private_tree(dir.path());
        assert_eq!(mode(&dir.path().join("db")), 0o600);
        assert_eq!(mode(&sub.join("blob")), 0o600);
        assert_eq!(mode(&sub), 0o700);
    }
}
