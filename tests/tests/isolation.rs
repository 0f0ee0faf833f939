//! Tenant isolation on a shared node, tried as a hostile tenant or local
//! user would, on the real Docker engine: file modes of the agent's state,
//! volume images and their mount options, and the control socket's peer
//! check.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use reservation::{Identity, ResultState};
use serde_json::json;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file under `dir` with group or other permission bits.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let m = mode(&p);
        if m & 0o077 != 0 {
            out.push(format!("{} {m:o}", p.display()));
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(open_to_others(&p));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_volumes_and_socket_are_for_root_alone() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "volume",
            json!({"size": 1, "type": "SSD"}),
            Duration::from_secs(600),
        )
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);

    assert_eq!(mode(&agent.root), 0o700, "root");
    assert_eq!(mode(&agent.root.join("node.seed")), 0o600);
    assert_eq!(mode(&agent.socket), 0o600, "control socket");
    let cache = agent.root.join("cache");
    assert_eq!(open_to_others(&cache), Vec::<String>::new(), "cache");

    // The volume image is 0600 and mounted nosuid,nodev.
    let img = agent.root.join(format!("volumes/{id}.img"));
    assert_eq!(mode(&img), 0o600, "{}", img.display());
    let mp = agent.root.join(format!("volumes/{id}"));
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let line = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(mp.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not mounted:\n{mounts}", mp.display()));
    let opts = line.split_whitespace().nth(3).unwrap();
    assert!(
        opts.split(',').any(|o| o == "nosuid") && opts.split(',').any(|o| o == "nodev"),
        "{line}"
    );

    // An operator loosens the socket's mode by mistake: a local user who is
    // neither root nor in its group is still refused, by SO_PEERCRED.
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666))?;
    std::fs::set_permissions(
        agent.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )?;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("agentctl"))
        .arg("--socket")
        .arg(&agent.socket)
        .arg("status")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody must be refused: {stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        agent.log().contains("refusing a peer"),
        "the refusal is logged"
    );
    // Root still gets through.
    assert_eq!(agent.status()?["node_id"], agent.node_id);
    Ok(())
}
