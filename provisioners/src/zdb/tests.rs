//! Unit tests of the `zdb` plug-in's pure parts: names, namespaces, the
//! entrypoint.

use super::*;

#[test]
fn namespaces_are_named_after_the_signed_reservation() {
    let user = Identity::generate();
    let mut r = Reservation {
        id: "12-3".into(),
        user_id: user.id().to_string(),
        ..Default::default()
    };
    r.signature = "sig-a".into();
    let a = namespace_name(&r);
    assert!(
        a.starts_with("12-3-") && a.len() == "12-3-".len() + 16,
        "{a}"
    );
    assert_eq!(reservation_of_namespace(&a), Some("12-3"));
    r.signature = "sig-b".into();
    assert_ne!(
        namespace_name(&r),
        a,
        "another signed reservation, another namespace"
    );
    for bad in [
        "default",
        "12-3",
        "12-3-xyz",
        "a-b-0123456789abcdef",
        "12-0123456789abcdef",
    ] {
        assert_eq!(reservation_of_namespace(bad), None, "{bad}");
    }
}

#[test]
fn the_entrypoint_never_carries_the_admin_password() {
    let e = zdb_entrypoint("seq").unwrap();
    assert_eq!(e[..2], ["/bin/sh", "-c"]);
    assert!(e[2].contains("--protect") && e[2].contains("--maxsize 1048576"));
    assert!(e[2].contains("--mode seq") && e[2].ends_with("--admin \"$ADMIN\""));
    assert!(zdb_entrypoint("user; rm -rf /").is_err());
}
