//! Unit tests of the `container` plug-in's pure parts: image references,
//! addresses and the stop timeout.

use super::spec::check_ip;
use super::*;

#[test]
fn image_refs() {
    assert_eq!(image_ref("busybox", "").unwrap(), "busybox");
    assert_eq!(
        image_ref("a/b:1", "reg.io:5000").unwrap(),
        "reg.io:5000/a/b:1"
    );
    assert_eq!(
        image_ref("hub.grid.tf/a/b", "https://mirror.io/").unwrap(),
        "mirror.io/a/b"
    );
    assert_eq!(image_ref("localhost/a", "m.io").unwrap(), "m.io/a");
    for bad in [
        "",
        "../x",
        "a/../b",
        "a b",
        "a?x=1",
        "/abs",
        "a//b",
        "https://x/y",
    ] {
        let e = image_ref(bad, "").unwrap_err().to_string();
        assert!(e.starts_with("flist "), "{bad}: {e}");
    }
    assert!(image_ref("a", "x/y")
        .unwrap_err()
        .to_string()
        .contains("flist_storage"));
}

#[test]
fn ips() {
    let sub: ipnet::Ipv4Net = "10.1.2.0/24".parse().unwrap();
    let gw = vec!["10.1.2.1".to_string()];
    assert!(check_ip("10.1.2.5".parse().unwrap(), "n", &[sub], &gw).is_ok());
    for (ip, want) in [
        ("10.1.3.5", "outside"),
        ("10.1.2.0", "network or broadcast"),
        ("10.1.2.255", "network or broadcast"),
        ("10.1.2.1", "gateway"),
    ] {
        let e = check_ip(ip.parse().unwrap(), "n", &[sub], &gw)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(want) && e.starts_with("network.ips: "),
            "{ip}: {e}"
        );
    }
}

#[test]
fn a_grace_in_whole_seconds_kills_at_the_expiry_not_before() {
    // 9.8 s left: truncating to 9 s would SIGKILL 0.8 s before the expiry
    // (the user loses paid time); wait 0.8 s, then 9 s.
    assert_eq!(
        whole_second_grace(Duration::from_millis(9_800)),
        (Duration::from_millis(800), Duration::from_secs(9))
    );
    // A full grace (an early deletion): no wait.
    assert_eq!(
        whole_second_grace(DEFAULT_STOP_GRACE),
        (Duration::ZERO, DEFAULT_STOP_GRACE)
    );
    assert_eq!(
        whole_second_grace(Duration::from_millis(300)),
        (Duration::from_millis(300), Duration::ZERO)
    );
}
