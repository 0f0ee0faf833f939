//! The volume provisioner against the real engine: size enforcement,
//! in-use protection, remount, idempotency, orphans.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use provisioners::{Docker, ProvisionError, Provisioner, VolumeProvisioner};
use reservation::{Identity, WorkloadType};
use serde_json::json;

use crate::common::{self, reservation, run_once, Guard};

fn is_mounted(p: &std::path::Path) -> bool {
    let me = std::fs::metadata(p).map(|m| m.dev());
    let parent = std::fs::metadata(p.parent().unwrap()).map(|m| m.dev());
    matches!((me, parent), (Ok(a), Ok(b)) if a != b)
}

#[tokio::test]
async fn volume_is_labelled_idempotent_and_its_size_is_enforced() {
    let mut g = Guard::new();
    let d = common::docker().await;
    let vp = VolumeProvisioner::new(d.clone(), g.root());
    assert_eq!(vp.unavailable(), None, "this machine must enforce sizes");
    let (user, node) = (Identity::generate(), Identity::generate());
    let id = g.id();
    let (r, w) = reservation(
        &user,
        &node,
        &id,
        WorkloadType::Volume,
        json!({"size": 1, "type": "HDD"}),
    );

    let res = vp.provision(&r, &w).await.expect("provision");
    assert_eq!(res, json!({"volume_id": id}));
    let name = format!("agent-vol-{id}");
    let v = d
        .client()
        .inspect_volume(&name)
        .await
        .expect("docker volume");
    assert_eq!(v.labels["io.agent.reservation"], id);
    assert_eq!(v.labels["io.agent.user"], user.id());
    assert_eq!(v.labels["io.agent.type"], "volume");
    assert_eq!(v.labels["io.agent.disk"], "HDD");
    assert_eq!(v.labels["io.agent.size_gib"], "1");
    assert_eq!(v.options["device"], vp.data_path(&id).to_string_lossy());
    let img = vp.image_path(&id);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 30);
    assert!(is_mounted(&vp.mount_path(&id)));

    // Twice: the same volume, the same image file, no twin.
    let inode = std::fs::metadata(&img).unwrap().ino();
    assert_eq!(vp.provision(&r, &w).await.unwrap(), res);
    assert_eq!(std::fs::metadata(&img).unwrap().ino(), inode);
    let n = d
        .list_volumes(&[("io.agent.reservation".into(), id.clone())])
        .await
        .unwrap()
        .len();
    assert_eq!(n, 1);
    assert!(vp.exists(&r, &w).await.unwrap());

    // Writing past 1 GiB inside a container fails with ENOSPC.
    let run = run_once(
        &d,
        Some("none"),
        &[(&name, "/data")],
        "df -k /data | tail -1; dd if=/dev/zero of=/data/big bs=1M count=1100; echo dd=$?",
    )
    .await
    .unwrap();
    assert!(
        run.output.contains("No space left on device"),
        "{}",
        run.output
    );
    assert!(run.output.contains("dd=1"), "{}", run.output);
    let size_kib: u64 = run
        .output
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("df: {}", run.output));
    assert!(
        (900 * 1024..=1024 * 1024).contains(&size_kib),
        "{size_kib} KiB"
    );
    // The host's disk did not take the bytes: only the image holds them.
    assert!(vp.data_path(&id).join("big").exists());

    // Decommission removes the Docker volume, the mount and the image.
    vp.decommission(&r, &w).await.expect("decommission");
    assert!(d.inspect_volume(&name).await.unwrap().is_none());
    assert!(!img.exists());
    assert!(!vp.mount_path(&id).exists());
    assert!(!vp.exists(&r, &w).await.unwrap());
    vp.decommission(&r, &w).await.expect("again is fine");
}

#[tokio::test]
async fn a_mounted_volume_is_not_removed_under_its_container() {
    let mut g = Guard::new();
    let d = common::docker().await;
    let vp = VolumeProvisioner::new(d.clone(), g.root());
    let (user, node) = (Identity::generate(), Identity::generate());
    let id = g.id();
    let (r, w) = reservation(
        &user,
        &node,
        &id,
        WorkloadType::Volume,
        json!({"size": 1, "type": "SSD"}),
    );
    vp.provision(&r, &w).await.unwrap();
    let name = format!("agent-vol-{id}");

    // A container of the same user mounts it (through the provisioner).
    let ct = provisioners::ContainerProvisioner::new(d.clone(), Arc::new(node.clone()))
        .with_stop_grace(std::time::Duration::from_secs(1));
    let (cr, cw) = reservation(
        &user,
        &node,
        &g.id(),
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32},
               "mounts": [{"volume_id": id, "mountpoint": "/v"}]}),
    );
    ct.provision(&cr, &cw).await.unwrap();
    match vp.decommission(&r, &w).await {
        Err(ProvisionError::InUse(m)) => {
            assert!(
                m.contains(&format!(
                    "volume {id} is still mounted by container agent-ct-{}",
                    cr.id
                )),
                "{m}"
            );
            assert!(m.contains("(running)"), "{m}");
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(d.inspect_volume(&name).await.unwrap().is_some());
    assert!(vp.image_path(&id).exists());
    // Once the container is gone, the retry succeeds.
    ct.decommission(&cr, &cw).await.unwrap();
    vp.decommission(&r, &w)
        .await
        .expect("retry after the container left");
    assert!(!vp.image_path(&id).exists());
}

#[tokio::test]
async fn lost_mounts_are_restored_and_data_survives() {
    let mut g = Guard::new();
    let d = common::docker().await;
    let vp = VolumeProvisioner::new(d.clone(), g.root());
    let (user, node) = (Identity::generate(), Identity::generate());
    let id = g.id();
    let (r, w) = reservation(
        &user,
        &node,
        &id,
        WorkloadType::Volume,
        json!({"size": 1, "type": "SSD"}),
    );
    vp.provision(&r, &w).await.unwrap();
    let name = format!("agent-vol-{id}");
    let run = run_once(&d, Some("none"), &[(&name, "/d")], "echo kept > /d/f")
        .await
        .unwrap();
    assert_eq!(run.code, 0, "{}", run.output);

    // As after a reboot: the loop mount is gone. A container cannot bind
    // the volume now (instead of writing to the host's disk)...
    let mp = vp.mount_path(&id);
    assert!(std::process::Command::new("umount")
        .arg(&mp)
        .status()
        .unwrap()
        .success());
    assert!(!is_mounted(&mp));
    let run = run_once(&d, Some("none"), &[(&name, "/d")], "echo x > /d/y").await;
    assert!(run.is_err() || run.unwrap().code != 0);
    // ...until reconciliation restores the mount.
    assert_eq!(vp.remount_all().await.unwrap(), vec![id.clone()]);
    assert!(is_mounted(&mp));
    assert!(std::process::Command::new("umount")
        .arg(&mp)
        .status()
        .unwrap()
        .success());
    assert!(vp.exists(&r, &w).await.unwrap());
    assert!(is_mounted(&mp));
    let run = run_once(&d, Some("none"), &[(&name, "/d")], "cat /d/f")
        .await
        .unwrap();
    assert_eq!(run.output.trim(), "kept");

    // The Docker volume removed behind our back: not existing; provisioning
    // again recreates it over the same image, data intact.
    d.remove_volume(&name).await.unwrap();
    assert!(!vp.exists(&r, &w).await.unwrap());
    assert!(
        vp.list_labelled().await.unwrap().contains(&id),
        "image orphan listed"
    );
    vp.provision(&r, &w).await.unwrap();
    let run = run_once(&d, Some("none"), &[(&name, "/d")], "cat /d/f")
        .await
        .unwrap();
    assert_eq!(run.output.trim(), "kept");

    vp.remove_labelled(&id).await.unwrap();
    assert!(!vp.list_labelled().await.unwrap().contains(&id));
    assert!(!vp.image_path(&id).exists());
}

/// A volume made by hand under the name the agent would use for a
/// reservation, labelled for another user, is replaced (with fresh,
/// empty data), not adopted.
#[tokio::test]
async fn a_hand_made_volume_under_the_name_is_replaced_not_adopted() {
    let mut g = Guard::new();
    let d = common::docker().await;
    let node = Identity::generate();
    let vp = VolumeProvisioner::new(d.clone(), g.root());
    let (alice, mallory) = (Identity::generate(), Identity::generate());
    let id = g.id();
    let name = format!("agent-vol-{id}");
    let out = std::process::Command::new("docker")
        .args(["volume", "create"])
        .args(["--label", &format!("io.agent.reservation={id}")])
        .args(["--label", &format!("io.agent.user={}", mallory.id())])
        .args(["--label", "io.agent.type=volume", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planted = common::run_once(&d, None, &[(&name, "/v")], "echo mallory > /v/planted")
        .await
        .unwrap();
    assert_eq!(planted.code, 0, "{}", planted.output);
    let (r, w) = reservation(
        &alice,
        &node,
        &id,
        WorkloadType::Volume,
        json!({"size": 1, "type": "SSD"}),
    );
    vp.provision(&r, &w)
        .await
        .expect("provision over the planted volume");
    let v = d.inspect_volume(&name).await.unwrap().unwrap();
    assert_eq!(v.labels["io.agent.user"], alice.id());
    assert_eq!(
        v.labels["io.agent.sig"],
        provisioners::names::signature_hash(&r)
    );
    assert_eq!(
        v.driver_opts.get("device").map(String::as_str),
        Some(vp.data_path(&id).to_string_lossy().as_ref())
    );
    let seen = common::run_once(&d, None, &[(&name, "/v")], "ls -A /v; echo end")
        .await
        .unwrap();
    assert!(!seen.output.contains("planted"), "{}", seen.output);
}
