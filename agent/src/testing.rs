//! Helpers shared by the agent's unit tests (compiled only for them).

use reservation::{Identity, Reservation};
use store::{Cached, Store};

/// Cache reservation `id` of type `kind` (empty data, one nanosecond long)
/// as if provisioned, with a result signed by `node`: a cached record for
/// tests that read the cache, not the workload.
pub(crate) fn cache_bare(store: &Store, node: &Identity, id: &str, kind: &str) {
    let r: Reservation = serde_json::from_str(&format!(
        r#"{{"id":"{id}","node_id":"n","user_id":"u","type":"{kind}","data":{{}},"created":"2026-11-25T11:00:00Z","duration":1,"signature":""}}"#
    ))
    .unwrap();
    let res = node.error_result(&r, "x");
    store
        .record_provisioned(&Cached::new(r, res.clone()), &res)
        .unwrap();
}
