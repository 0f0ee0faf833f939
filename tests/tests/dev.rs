//! The README's quick start, as a user types it: `agent --dev`, then the
//! `explorer keygen` and `explorer reserve container ...` commands it
//! prints, leave a running container visible in `docker ps` and
//! `agentctl list`; then the README's clean-up. The dev explorer listens on
//! a free port (`--dev-port`), so a developer's own `agent --dev` on 7700
//! never breaks this test.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_quick_start() -> anyhow::Result<()> {
    ensure_images();
    let home = tempfile::tempdir()?;
    let bins = bin("agent").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut agent = Command::new(bin("agent"))
        .arg("--dev")
        .arg("--dev-port")
        .arg(free_port().to_string())
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("PATH", &path)
        .env("AGENT_CONFIG", "/dev/null")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(home.path().join("agent.log"))?)
        .spawn()?;
    // Read what it prints until the reserve command shows.
    let mut out = BufReader::new(agent.stdout.take().unwrap());
    let mut printed = Vec::new();
    let reserve = loop {
        let mut line = String::new();
        if out.read_line(&mut line)? == 0 {
            anyhow::bail!(
                "agent --dev exited early: {printed:?}\n{}",
                std::fs::read_to_string(home.path().join("agent.log"))?
            );
        }
        printed.push(line.clone());
        if line.trim_start().starts_with("explorer reserve container") {
            break line.trim().to_string();
        }
    };
    let node = reserve
        .split_whitespace()
        .skip_while(|w| *w != "--node")
        .nth(1)
        .unwrap()
        .to_string();
    let run = |cmd: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(home.path())
            .env("HOME", home.path())
            .env("PATH", &path)
            .output()
    };
    assert!(run("explorer keygen")?.status.success());
    let r = run(&reserve)?;
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let ps = wait_for(
        "the container in docker ps",
        Duration::from_secs(30),
        || async {
            let ps = docker(&[
                "ps",
                "--filter",
                "label=io.agent.reservation=1-1",
                "--filter",
                &format!("label=io.agent.node={node}"),
                "--format",
                "{{.Names}} {{.Status}}",
            ])
            .ok()?;
            ps.contains("Up").then_some(ps)
        },
    )
    .await?;
    assert!(ps.contains("-ct-1-1"), "{ps}");
    // Without --socket, agentctl finds the dev agent's socket and says so
    // (when there is no system agent on this machine).
    if !std::path::Path::new("/run/agent/agent.sock").exists() {
        let plain = run("agentctl list")?;
        assert!(plain.status.success());
        assert!(
            String::from_utf8_lossy(&plain.stderr).contains("using the dev agent's socket"),
            "{}",
            String::from_utf8_lossy(&plain.stderr)
        );
    }
    let list = run("agentctl --socket .agent-dev/agent.sock list")?;
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("1-1") && text.contains("container") && text.contains("running"),
        "{text}"
    );
    // The README's clean-up step, as written: purge, then stop.
    let purge = run("agentctl --socket .agent-dev/agent.sock purge --yes")?;
    let text = String::from_utf8_lossy(&purge.stdout);
    assert!(
        purge.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&purge.stderr)
    );
    assert!(
        text.contains("1-1 container") && text.contains("removed"),
        "{text}"
    );
    let f = format!("label=io.agent.node={node}");
    assert_eq!(
        docker(&["ps", "-a", "-q", "--filter", &f])?,
        "",
        "nothing left"
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(agent.id().to_string())
        .status();
    let _ = agent.wait();
    // Nothing left to purge: the exit reminder is not printed.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest)?;
    assert!(!rest.contains("keep running"), "{rest}");
    cleanup_node(&node, home.path());
    Ok(())
}
