//! What the explorer's process benchmarks share: the release binary they
//! start and the guard that stops it.

use std::path::{Path, PathBuf};
use std::process::Child;

use anyhow::{bail, Context, Result};

/// A started `explorer serve`, killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release `explorer` next to the running bench binary, or the one
/// `EXPLORER_BENCH_BIN` names (to compare two builds).
pub fn explorer_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("EXPLORER_BENCH_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.exists() {
            bail!("EXPLORER_BENCH_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .and_then(Path::parent)
        .context("target dir")?
        .join("explorer");
    if !p.exists() {
        bail!(
            "{} is missing: run `cargo build --release --bins` first",
            p.display()
        );
    }
    Ok(p)
}
