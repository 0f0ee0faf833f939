//! Regression tests for inputs the fuzz targets (`fuzz/`) found: each is
//! the minimized crash input, byte for byte, and asserts what a user sees
//! now. See fuzz/RESULTS.md.

use reservation::{Workload, WorkloadType};
use serde_json::value::RawValue;

/// Feed a `workload_data` fuzz input the way the target does: the first
/// byte picks the type, the rest is the `data` text.
fn workload_input(input: &[u8]) -> Result<Workload, reservation::Error> {
    let (sel, rest) = input.split_first().expect("non-empty input");
    let kind = WorkloadType::ALL[*sel as usize % WorkloadType::ALL.len()];
    let raw = RawValue::from_string(String::from_utf8(rest.to_vec()).unwrap()).unwrap();
    Workload::parse(kind, &raw)
}

/// `workload_data` crash: the entrypoint `#'<newline>'` passed the
/// validator's hand-rolled quote check (it saw a closed quote), but the
/// container provisioner's `shell_words::split` reads `#` as a comment up
/// to the newline and then meets an unclosed quote. The validator now
/// splits exactly as the provisioner does, so the user gets the error in
/// the reservation's result instead of at provisioning.
#[test]
fn entrypoint_comment_then_quote_is_refused_like_the_provisioner_does() {
    let input =
        b"\x03{\"flist\":\"b\",\"entrypoint\":\"#'\\n'\",\"capacity\":{\"cpu\":1,\"memory\":5}}";
    assert_eq!(input[0] as usize % 6, 3, "type byte selects container");
    let e = workload_input(input).unwrap_err().to_string();
    assert_eq!(
        e,
        "data.entrypoint: cannot be shell-split: missing closing quote"
    );
    assert!(shell_words::split("#'\n'").is_err());
}

/// The same validator still accepts what the provisioner can split,
/// comments included, and refuses an open quote.
#[test]
fn entrypoints_the_provisioner_can_split_are_accepted() {
    let data = |ep: &str| {
        let mut s = b"\x03".to_vec();
        s.extend_from_slice(
            serde_json::json!({"flist": "b", "entrypoint": ep, "capacity": {"cpu": 1, "memory": 5}})
                .to_string()
                .as_bytes(),
        );
        s
    };
    for ok in [
        "sh -c 'sleep 10; echo \"x\"'",
        "sh # it's a comment",
        "a\\ b 'c d' \"e \\\" f\"",
        "x \\",
    ] {
        assert!(workload_input(&data(ok)).is_ok(), "{ok:?} refused");
        assert!(shell_words::split(ok).is_ok());
    }
    for bad in ["sh -c 'sleep", "echo \"x", "#\n'"] {
        let e = workload_input(&data(bad)).unwrap_err().to_string();
        assert!(e.starts_with("data.entrypoint: "), "{bad:?}: {e}");
    }
}
