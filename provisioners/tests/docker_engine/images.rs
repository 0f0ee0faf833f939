//! Image garbage collection on the real engine: only images the agent
//! pulled, unused for the grace period, are removed; images in use and
//! images the operator made by hand stay.

use std::process::Command;
use std::time::Duration;

use provisioners::images::{self, ImagePolicy};
use provisioners::BollardDocker;

use crate::common::{test_image, unique_number};

fn sh(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn collects_only_unused_images_the_agent_pulled() {
    let base = test_image();
    let n = unique_number();
    let ours = format!("agent-test/gc-ours:{n}");
    let used = format!("agent-test/gc-used:{n}");
    let by_hand = format!("agent-test/gc-hand:{n}");
    for t in [&ours, &used, &by_hand] {
        assert!(sh(&["tag", base, t]));
    }
    let user_container = format!("gc-user-{n}");
    assert!(sh(&["create", "--name", &user_container, &used, "true"]));

    let dir = tempfile::tempdir().unwrap();
    let policy = ImagePolicy::new(Duration::from_secs(60), dir.path().join("images.json"));
    // As if the agent had pulled these two (no registry here to pull from).
    for image in [&ours, &used] {
        policy.pull(image, || async { Ok(()) }).await.unwrap();
    }
    let docker = BollardDocker::connect()
        .await
        .unwrap()
        .with_image_policy(policy);
    let removed = images::collect(&docker, docker.image_policy(), Duration::ZERO)
        .await
        .unwrap();

    let exists = |i: &str| sh(&["image", "inspect", i]);
    let (used_stays, hand_stays) = (exists(&used), exists(&by_hand));
    let _ = Command::new("docker")
        .args(["rm", "-f", &user_container])
        .output();
    let _ = Command::new("docker")
        .args(["rmi", &used, &by_hand])
        .output();
    assert!(used_stays, "an image a container uses stays");
    assert!(hand_stays, "an image the operator made stays");
    assert_eq!(removed, vec![ours.clone()]);
    assert!(!exists(&ours), "our unused image is gone");
    assert!(exists(base), "the base image (other tags) stays");
}
