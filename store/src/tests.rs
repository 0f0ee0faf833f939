//! Unit tests of the store on a temp dir: atomic records, expiry order,
//! cursor, outbox, counters, and survival across reopen.

use super::*;
use chrono::Duration;
use reservation::{Identity, Reservation};

fn reservation(id: &str, kind: &str, created: DateTime<Utc>, secs: i64) -> Reservation {
    serde_json::from_value(serde_json::json!({
        "id": id, "node_id": "n", "user_id": "u", "type": kind,
        "data": {"size": 1, "type": "SSD"},
        "created": created, "duration": secs * 1_000_000_000i64,
        "signature": "", "to_delete": false
    }))
    .unwrap()
}

/// Open the store in `dir`, waiting for a handle this process just dropped
/// to let go of sled's file lock: sled's background flusher may still hold
/// it for a moment, and under load `open` then fails with `WouldBlock`.
fn reopen(dir: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match Store::open(dir) {
            Ok(s) => return s,
            Err(StoreError::Open {
                source: sled::Error::Io(e),
                ..
            }) if (e.kind() == std::io::ErrorKind::WouldBlock
                || e.to_string().contains("could not acquire lock"))
                && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen {}: {e}", dir.display()),
        }
    }
}

/// `r` as the node caches it, with its signed result.
fn as_cached(node: &Identity, r: Reservation) -> (Cached, WorkloadResult) {
    let res = node
        .ok_result(&r, &serde_json::json!({"volume_id": r.id}))
        .unwrap();
    (Cached::new(r, res.clone()), res)
}

/// A store on a fresh temp dir (kept alive by the first element), a node
/// identity and the time now: the set-up of most tests here.
fn fresh() -> (tempfile::TempDir, Store, Identity, DateTime<Utc>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    (dir, s, Identity::generate(), Utc::now())
}

fn provision(s: &Store, node: &Identity, r: Reservation) -> u64 {
    let (cached, res) = as_cached(node, r);
    s.record_provisioned(&cached, &res).unwrap()
}

#[test]
fn provisioned_is_cached_indexed_counted_and_queued() {
    let (_dir, s, node, now) = fresh();
    provision(&s, &node, reservation("2-1", "volume", now, 60));
    provision(&s, &node, reservation("1-1", "volume", now, 10));
    provision(&s, &node, reservation("3-1", "network", now, 30));
    assert_eq!(s.cached_len(), 3);
    assert_eq!(s.counters().unwrap()["volume"], 2);
    assert_eq!(s.counters().unwrap()["network"], 1);
    assert_eq!(s.outbox_len(), 3);
    assert_eq!(
        s.outcome("1-1").unwrap().unwrap().state,
        OutcomeState::Provisioned
    );
    // Expiry order, not id order.
    let next = s.next_expiry().unwrap().unwrap();
    assert!(
        (next - (now + Duration::seconds(10)))
            .num_milliseconds()
            .abs()
            < 2
    );
    assert_eq!(
        s.due(now + Duration::seconds(45), 10).unwrap(),
        vec!["1-1", "3-1"]
    );
    assert!(s.due(now, 10).unwrap().is_empty());
    // The raw data bytes survive the cache.
    let c = s.get("2-1").unwrap().unwrap();
    assert_eq!(c.reservation.data.get(), r#"{"size":1,"type":"SSD"}"#);
}

#[test]
fn decommission_clears_index_and_queues_deleted() {
    let (_dir, s, node, now) = fresh();
    provision(&s, &node, reservation("1-1", "volume", now, 10));
    for e in s.outbox_peek(10).unwrap() {
        s.outbox_ack(e.seq).unwrap();
    }
    s.record_decommissioned("1-1", "volume", "", "c2ln", None)
        .unwrap();
    assert!(!s.is_cached("1-1").unwrap());
    assert_eq!(s.counters().unwrap()["volume"], 0);
    assert!(s.next_expiry().unwrap().is_none());
    assert_eq!(
        s.outcome("1-1").unwrap().unwrap().state,
        OutcomeState::Deleted
    );
    let out = s.outbox_peek(10).unwrap();
    assert_eq!(out.len(), 1);
    assert!(
        matches!(&out[0].item, Outbound::Deleted { id, signature } if id == "1-1" && signature == "c2ln")
    );
    // Twice is harmless: the counter does not go negative.
    s.record_decommissioned("1-1", "volume", "", "c2ln", None)
        .unwrap();
    assert_eq!(s.counters().unwrap()["volume"], 0);
}

#[test]
fn reschedule_moves_the_expiry() {
    let (_dir, s, node, now) = fresh();
    provision(&s, &node, reservation("1-1", "volume", now, 1));
    s.reschedule("1-1", now + Duration::seconds(100)).unwrap();
    assert!(s.due(now + Duration::seconds(50), 10).unwrap().is_empty());
    assert_eq!(
        s.due(now + Duration::seconds(101), 10).unwrap(),
        vec!["1-1"]
    );
    assert!(s.reschedule("9-9", now).is_err());
}

#[test]
fn provisioning_a_cached_id_again_moves_its_one_expiry_entry() {
    // A fresh record skips the expiry index lookup; a record written over
    // a cached one must still drop its old entry, in one unit or apart.
    let (_dir, s, node, now) = fresh();
    provision(&s, &node, reservation("1-1", "volume", now, 10));
    provision(&s, &node, reservation("1-1", "volume", now, 100));
    let unit = Unit::new(s.clone());
    for secs in [10, 200] {
        let (cached, res) = as_cached(&node, reservation("2-1", "volume", now, secs));
        unit.provisioned(&cached, &res).unwrap();
    }
    unit.commit().unwrap();
    assert!(s.due(now + Duration::seconds(50), 10).unwrap().is_empty());
    assert_eq!(
        s.due(now + Duration::seconds(300), 10).unwrap(),
        vec!["1-1", "2-1"]
    );
    assert_eq!(s.counters().unwrap()["volume"], 2);
}

#[test]
fn scheduled_reads_the_expiry_to_the_millisecond() {
    let (_dir, s, node, now) = fresh();
    provision(&s, &node, reservation("1-1", "volume", now, 60));
    let exp = s.get("1-1").unwrap().unwrap().expires_at();
    let at = s.scheduled("1-1").unwrap().unwrap();
    assert_eq!(at.timestamp_millis(), exp.timestamp_millis());
    let soon = now + Duration::seconds(5);
    s.reschedule("1-1", soon).unwrap();
    let at = s.scheduled("1-1").unwrap().unwrap();
    assert_eq!(at.timestamp_millis(), soon.timestamp_millis());
    assert_eq!(s.scheduled("9-9").unwrap(), None);
}

#[test]
fn survives_reopen_and_cursor_never_moves_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = Identity::generate();
    {
        let s = Store::open(dir.path()).unwrap();
        provision(&s, &node, reservation("1-1", "volume", Utc::now(), 10));
        let refused = node.error_result(
            &reservation("2-1", "volume", Utc::now(), 10),
            "data.size: must be > 0 GiB",
        );
        s.record_refused(&refused, "").unwrap();
        s.set_cursor(7).unwrap();
        s.set_cursor(3).unwrap();
        s.flush().unwrap();
    }
    let s = reopen(dir.path());
    assert_eq!(s.cursor().unwrap(), 7);
    assert!(s.is_cached("1-1").unwrap());
    let o = s.outcome("2-1").unwrap().unwrap();
    assert_eq!(o.state, OutcomeState::Refused);
    assert_eq!(o.error, "data.size: must be > 0 GiB");
    let out = s.outbox_peek(10).unwrap();
    assert_eq!(out.len(), 2);
    assert!(out[0].seq < out[1].seq, "outbox keeps order");
}

#[test]
fn refused_signatures_enter_the_replay_index_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let node = Identity::generate();
    let r = reservation("5-1", "volume", Utc::now(), 10);
    s.record_refused(&node.error_result(&r, "not enough capacity"), "sigA")
        .unwrap();
    assert_eq!(s.signature_owner("sigA").unwrap().as_deref(), Some("5-1"));
    // The first id stays the owner.
    let r2 = reservation("6-1", "volume", Utc::now(), 10);
    s.record_refused(&node.error_result(&r2, "replay"), "sigA")
        .unwrap();
    assert_eq!(s.signature_owner("sigA").unwrap().as_deref(), Some("5-1"));
    // An unverified signature (empty here) is never indexed.
    s.record_refused(&node.error_result(&r2, "bad signature"), "")
        .unwrap();
    assert_eq!(s.signature_owner("").unwrap(), None);
}

#[test]
fn newer_schema_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.outcomes
        .insert("1-1", br#"{"v":99,"body":{}}"#.to_vec())
        .unwrap();
    let e = s.outcome("1-1").unwrap_err().to_string();
    assert!(e.contains("schema 99"), "{e}");
}

/// A handle still open (here: dropped 300 ms later by another thread) is
/// waited for, not reported as a second agent on the same root at once.
#[test]
fn open_waits_for_a_handle_being_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let second = Store::open(dir.path());
    holder.join().unwrap();
    assert!(second.is_ok(), "{:?}", second.err());
}

fn signed(id: &str, signature: &str) -> Reservation {
    let mut r = reservation(id, "volume", Utc::now(), 60);
    r.signature = signature.to_string();
    r
}

fn staged(u: &Unit, node: &Identity, r: Reservation) {
    let res = node
        .ok_result(&r, &serde_json::json!({"volume_id": r.id}))
        .unwrap();
    u.provisioned(&Cached::new(r, res.clone()), &res).unwrap();
}

/// Reads through a unit see what it staged, before the trees; the store
/// alone sees none of it until the commit.
#[test]
fn a_unit_reads_its_staged_records_before_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let node = Identity::generate();
    let u = Unit::new(s.clone());
    staged(&u, &node, signed("1-1", "sigA"));
    // Recorded, not committed: the replay index and the cache answer.
    assert_eq!(u.signature_owner("sigA").unwrap().as_deref(), Some("1-1"));
    assert!(u.is_cached("1-1").unwrap());
    assert_eq!(u.get("1-1").unwrap().unwrap().reservation.id, "1-1");
    assert_eq!(
        u.outcome("1-1").unwrap().unwrap().state,
        OutcomeState::Provisioned
    );
    // Every clone of the store reads them too; the trees hold none yet.
    assert_eq!(s.signature_owner("sigA").unwrap().as_deref(), Some("1-1"));
    assert!(s.clone().is_cached("1-1").unwrap());
    assert!(s.signatures.get("sigA").unwrap().is_none());
    assert!(s.cache.get("1-1").unwrap().is_none());
    assert!(s.outcomes.get("1-1").unwrap().is_none());
    assert_eq!(s.outbox.len(), 0);
    // The staged result is peeked after the committed ones, under the seq
    // it will keep.
    assert_eq!(s.outbox_len(), 1);
    let staged_seq = s.outbox_peek(10).unwrap()[0].seq;
    // A replay refused in the same unit does not take the signature over.
    let replay = node.error_result(&signed("2-1", "sigA"), "replay");
    u.refused(&replay, "sigA").unwrap();
    assert_eq!(u.signature_owner("sigA").unwrap().as_deref(), Some("1-1"));
    // A deletion in the same unit sees it cached and removes it.
    u.decommissioned("1-1", "volume", "sigA", "c2ln", None)
        .unwrap();
    assert!(!u.is_cached("1-1").unwrap());
    assert!(u.get("1-1").unwrap().is_none());
    assert_eq!(
        u.outcome("1-1").unwrap().unwrap().state,
        OutcomeState::Deleted
    );
    assert!(matches!(
        u.reschedule("1-1", Utc::now()),
        Err(StoreError::NotCached(id)) if id == "1-1"
    ));
    u.set_cursor(9);
    assert_eq!(s.cursor().unwrap(), 0, "the cursor waits for the commit");
    assert_eq!(u.len(), 4);

    let last = u.commit().unwrap().unwrap();
    assert!(u.is_empty());
    assert!(!s.is_cached("1-1").unwrap());
    assert_eq!(s.counters().unwrap()["volume"], 0);
    assert!(s.next_expiry().unwrap().is_none());
    assert_eq!(s.signature_owner("sigA").unwrap().as_deref(), Some("1-1"));
    assert_eq!(
        s.outcome("2-1").unwrap().unwrap().state,
        OutcomeState::Refused
    );
    assert_eq!(s.cursor().unwrap(), 9);
    // Three messages in staging order, seqs increasing, the last returned.
    let out = s.outbox_peek(10).unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(out[2].seq, last);
    assert_eq!(out[0].seq, staged_seq);
    assert!(matches!(&out[0].item, Outbound::Result(r) if r.id == "1-1"));
    assert!(matches!(&out[1].item, Outbound::Result(r) if r.id == "2-1"));
    assert!(matches!(&out[2].item, Outbound::Deleted { id, .. } if id == "1-1"));
    // Later records take later seqs, through a unit or on their own.
    let next = s.queue_deleted("1-1", "c2ln").unwrap();
    assert!(next > last);
    let u = Unit::new(s.clone());
    let again = u.deleted_again("1-1", "c2ln").unwrap();
    assert!(again > next);
    assert_eq!(u.commit().unwrap(), Some(again));
    assert_eq!(u.commit().unwrap(), None, "an empty unit commits nothing");
}

/// A crash before the commit loses the whole unit: staged records are not
/// in the store, not even after a flush, and are gone after a reopen; a
/// committed and flushed unit is there whole.
#[test]
fn a_crash_before_the_commit_loses_the_whole_unit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Identity::generate();
    {
        let s = Store::open(dir.path()).unwrap();
        let u = Unit::new(s.clone());
        staged(&u, &node, signed("1-1", "sigA"));
        u.commit().unwrap();
        s.flush().unwrap();
        let u = Unit::new(s.clone());
        for i in 2..=4 {
            staged(&u, &node, signed(&format!("{i}-1"), &format!("sig{i}")));
        }
        u.refused(&node.error_result(&signed("5-1", "sig5"), "no"), "sig5")
            .unwrap();
        u.decommissioned("1-1", "volume", "sigA", "c2ln", None)
            .unwrap();
        u.set_cursor(5);
        s.flush().unwrap();
        // Dropped uncommitted: the process died mid-unit.
    }
    let s = reopen(dir.path());
    assert_eq!(s.cached_len(), 1);
    assert!(
        s.is_cached("1-1").unwrap(),
        "the unit's deletion is lost too"
    );
    assert_eq!(s.counters().unwrap()["volume"], 1);
    for i in 2..=5 {
        let id = format!("{i}-1");
        assert!(s.outcome(&id).unwrap().is_none(), "{id}");
        assert_eq!(s.signature_owner(&format!("sig{i}")).unwrap(), None);
    }
    assert_eq!(s.outbox_len(), 1, "only the first unit's result");
    assert_eq!(s.cursor().unwrap(), 0);
    assert_eq!(
        s.due(Utc::now() + Duration::days(1), 10).unwrap(),
        vec!["1-1"]
    );

    // The same unit committed and flushed is there whole.
    let u = Unit::new(s.clone());
    for i in 2..=4 {
        staged(&u, &node, signed(&format!("{i}-1"), &format!("sig{i}")));
    }
    u.decommissioned("1-1", "volume", "sigA", "c2ln", None)
        .unwrap();
    u.set_cursor(5);
    u.commit().unwrap();
    s.flush().unwrap();
    drop(u);
    drop(s);
    let s = reopen(dir.path());
    assert_eq!(s.cached_len(), 3);
    assert!(!s.is_cached("1-1").unwrap());
    assert_eq!(s.counters().unwrap()["volume"], 3);
    assert_eq!(s.outbox_len(), 5);
    assert_eq!(s.cursor().unwrap(), 5);
    assert_eq!(s.signature_owner("sig3").unwrap().as_deref(), Some("3-1"));
}

/// The generation moves with every change of the cache tree, and only
/// then; the ids come without decoding.
#[test]
fn the_cache_generation_moves_with_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let node = Identity::generate();
    let g0 = s.cache_generation();
    provision(&s, &node, reservation("2-1", "volume", Utc::now(), 60));
    provision(&s, &node, reservation("1-1", "volume", Utc::now(), 60));
    let g1 = s.cache_generation();
    assert!(g1 > g0);
    s.set_cursor(3).unwrap();
    s.queue_deleted("9-9", "c2ln").unwrap();
    assert_eq!(s.cache_generation(), g1, "no cache change");
    let ids: Vec<String> = s.cached_ids().collect::<Result<_, _>>().unwrap();
    assert_eq!(ids, vec!["1-1", "2-1"]);
    s.record_decommissioned("1-1", "volume", "", "c2ln", None)
        .unwrap();
    assert!(s.cache_generation() > g1);
}

/// `cached_len` sums the per-type counters (kept since the store's first
/// format, so stores of older releases have them): it stays the number of
/// cached ids through a re-provision of one id, a decommission
/// twice over, one of an id never cached, and a reopen.
#[test]
fn cached_len_from_the_counters_is_the_number_of_cached_ids() {
    let (dir, s, node, now) = fresh();
    let len = |s: &Store| s.cached_ids().count();
    provision(&s, &node, reservation("1-1", "volume", now, 60));
    provision(&s, &node, reservation("1-1", "volume", now, 90));
    provision(&s, &node, reservation("2-1", "network", now, 60));
    provision(&s, &node, reservation("3-1", "zdb", now, 60));
    assert_eq!((s.cached_len(), len(&s)), (3, 3));
    for _ in 0..2 {
        s.record_decommissioned("1-1", "volume", "", "c2ln", None)
            .unwrap();
    }
    s.record_decommissioned("9-1", "volume", "", "c2ln", None)
        .unwrap();
    assert_eq!((s.cached_len(), len(&s)), (2, 2));
    drop(s);
    let s = reopen(dir.path());
    assert_eq!((s.cached_len(), len(&s)), (2, 2));
}

#[test]
fn records_decode_in_one_pass_and_name_a_newer_schema_or_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let node = Identity::generate();
    provision(&s, &node, reservation("1-1", "volume", Utc::now(), 60));
    let good = s.cache.get("1-1").unwrap().unwrap();
    assert_eq!(s.get("1-1").unwrap().unwrap().reservation.id, "1-1");

    // A later schema, whether or not its body still reads as this one's.
    let newer = String::from_utf8(good.to_vec())
        .unwrap()
        .replacen("{\"v\":1,", "{\"v\":2,", 1);
    assert!(newer.starts_with("{\"v\":2,"), "{newer}");
    s.cache.insert("2-1", newer.as_bytes()).unwrap();
    s.cache
        .insert("3-1", &br#"{"v":7,"body":{"other":"shape"}}"#[..])
        .unwrap();
    // This schema with a body that does not read, and no envelope at all.
    s.cache
        .insert("4-1", &br#"{"v":1,"body":{"other":"shape"}}"#[..])
        .unwrap();
    s.cache.insert("5-1", &b"not json"[..]).unwrap();

    for (id, found) in [("2-1", 2), ("3-1", 7)] {
        match s.get(id) {
            Err(StoreError::Schema { key, found: f }) => assert_eq!((key.as_str(), f), (id, found)),
            other => panic!("{id}: {other:?}"),
        }
    }
    for id in ["4-1", "5-1"] {
        match s.get(id) {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, id),
            other => panic!("{id}: {other:?}"),
        }
    }
}

/// Records staged while a commit runs on another thread stay staged and
/// readable (also one that changes a record the commit applies), and the
/// next commit applies them after it: the store ends as one commit of all
/// of them in staging order would leave it, each outbox message once.
#[test]
fn records_staged_during_a_commit_wait_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let node = Identity::generate();
    let u = Unit::new(s.clone());
    // Enough that the commit is still running while the rest is staged.
    for i in 1..=2_000 {
        staged(&u, &node, signed(&format!("{i}-1"), &format!("sig{i}")));
    }
    let first = {
        let u = u.clone();
        std::thread::spawn(move || u.commit().unwrap().unwrap())
    };
    // Once the commit took the 2,000 (it then runs its transaction): the
    // deletion of a record it applies, and new records.
    while !u.is_empty() {
        std::thread::yield_now();
    }
    u.decommissioned("1-1", "volume", "sig1", "c2ln", None)
        .unwrap();
    for i in 2_001..=2_010 {
        staged(&u, &node, signed(&format!("{i}-1"), &format!("sig{i}")));
    }
    u.set_cursor(7);
    while !first.is_finished() {
        assert!(!u.is_cached("1-1").unwrap(), "the deletion stays seen");
        assert!(u.is_cached("2010-1").unwrap());
        assert!(u.is_cached("2-1").unwrap());
    }
    let first_last = first.join().unwrap();
    // Committed: the first 2,000; still staged: what came during it.
    assert_eq!(u.len(), 12);
    assert!(!u.is_cached("1-1").unwrap());
    assert_eq!(
        u.outcome("1-1").unwrap().unwrap().state,
        OutcomeState::Deleted
    );
    assert!(u.is_cached("2005-1").unwrap());
    assert_eq!(s.cursor().unwrap(), 0);
    assert_eq!(s.outbox_len(), 2_011, "each message once");
    let last = u.commit().unwrap().unwrap();
    assert!(last > first_last);
    assert!(u.is_empty());
    assert!(!s.is_cached("1-1").unwrap());
    assert_eq!(s.cached_len(), 2_009);
    assert_eq!(s.counters().unwrap()["volume"], 2_009);
    assert_eq!(s.cursor().unwrap(), 7);
    assert_eq!(
        s.signature_owner("sig2010").unwrap().as_deref(),
        Some("2010-1")
    );
    let out = s.outbox_peek(3_000).unwrap();
    assert_eq!(out.len(), 2_011);
    assert!(out.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(matches!(&out[2_000].item, Outbound::Deleted { id, .. } if id == "1-1"));
    assert_eq!(
        s.due(Utc::now() + Duration::days(1), 3_000).unwrap().len(),
        2_009
    );
}

/// The trees' contents, as a user of the store would never see them: the
/// records written per provisioned reservation.
fn tree_lens(s: &Store) -> (usize, usize, usize, usize) {
    (
        s.cache.len(),
        s.outcomes.len(),
        s.expiry.len(),
        s.expiry_by_id.len(),
    )
}

/// A provisioned record writes no outcome and no `expiry_by_id` record
/// (its cache record implies both), yet reads as before, through a unit
/// and after a commit and a reopen: provisioned at `cached_at`, scheduled
/// at its expiry; a reschedule and a decommission find its index entry.
#[test]
fn provisioned_records_imply_their_outcome_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let node = Identity::generate();
    let now = Utc::now();
    let s = Store::open(dir.path()).unwrap();
    let u = Unit::new(s.clone());
    for (id, secs) in [("1-1", 10), ("2-1", 20), ("3-1", 30)] {
        staged(&u, &node, reservation(id, "volume", now, secs));
    }
    let staged_at = u.outcome("1-1").unwrap().unwrap().at;
    u.commit().unwrap();
    s.flush().unwrap();
    assert_eq!(tree_lens(&s), (3, 0, 3, 0), "cache and expiry entries only");
    drop((u, s));
    let s = reopen(dir.path());
    let c = s.get("1-1").unwrap().unwrap();
    let o = s.outcome("1-1").unwrap().unwrap();
    assert_eq!(
        (o.state, o.at, o.error.as_str()),
        (OutcomeState::Provisioned, c.cached_at, "")
    );
    assert_eq!(o.at, staged_at, "staged and committed read alike");
    assert_eq!(
        s.outcome_state("1-1").unwrap(),
        Some(OutcomeState::Provisioned)
    );
    assert_eq!(s.outcome_state("9-1").unwrap(), None);
    assert!(s.outcome("9-1").unwrap().is_none());
    assert_eq!(
        s.scheduled("1-1").unwrap().unwrap().timestamp_millis(),
        c.expires_at().timestamp_millis()
    );
    assert_eq!(s.rescheduled("1-1").unwrap(), None);
    // A reschedule moves the record's own entry and keeps the new time.
    let soon = now + Duration::seconds(5);
    s.reschedule("2-1", soon).unwrap();
    assert_eq!(s.due(now + Duration::seconds(6), 10).unwrap(), vec!["2-1"]);
    assert_eq!(
        s.rescheduled("2-1").unwrap().unwrap().timestamp_millis(),
        soon.timestamp_millis()
    );
    assert_eq!(s.scheduled("2-1").unwrap(), s.rescheduled("2-1").unwrap());
    // Decommissions drop the entry, whether rescheduled or not.
    for id in ["1-1", "2-1"] {
        s.record_decommissioned(id, "volume", "", "c2ln", None)
            .unwrap();
        assert_eq!(s.outcome_state(id).unwrap(), Some(OutcomeState::Deleted));
        assert_eq!(s.scheduled(id).unwrap(), None);
    }
    assert_eq!(
        s.due(now + Duration::seconds(100), 10).unwrap(),
        vec!["3-1"]
    );
    assert_eq!(tree_lens(&s), (1, 2, 1, 0));
    assert_eq!(s.cached_len(), 1);
}

/// Write `r` as the code before stop 23 did: a cache record, an outcome
/// record, an expiry entry at `at` (its expiry unless rescheduled) with its
/// `expiry_by_id` record, the counter and the replay index.
fn provision_old_style(s: &Store, node: &Identity, r: Reservation, at: Option<DateTime<Utc>>) {
    let (cached, _) = as_cached(node, r);
    let id = cached.reservation.id.clone();
    let key = expiry_key(at.unwrap_or(cached.expires_at()), &id);
    s.cache.insert(&id, records::encode(&cached)).unwrap();
    let outcome = Outcome::new(OutcomeState::Provisioned, "");
    s.outcomes.insert(&id, records::encode(&outcome)).unwrap();
    s.expiry.insert(key.as_slice(), &[]).unwrap();
    s.expiry_by_id.insert(&id, key.as_slice()).unwrap();
    let kind = counter_key(&cached.reservation.kind);
    let n = s
        .meta
        .get(&kind)
        .unwrap()
        .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap()));
    s.meta.insert(kind, &(n + 1).to_be_bytes()).unwrap();
}

/// A store written before stop 23 (every cached record with an outcome
/// and an `expiry_by_id` record) reads the same, and its records are
/// rescheduled, provisioned again and decommissioned without leaving an
/// index entry behind, also one rescheduled away from its expiry.
#[test]
fn a_store_written_before_stop_23_reads_and_changes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let node = Identity::generate();
    let now = Utc::now();
    let early = now + Duration::seconds(2);
    {
        let s = Store::open(dir.path()).unwrap();
        provision_old_style(&s, &node, reservation("1-1", "volume", now, 10), None);
        provision_old_style(
            &s,
            &node,
            reservation("2-1", "volume", now, 20),
            Some(early),
        );
        provision_old_style(&s, &node, reservation("3-1", "volume", now, 30), None);
        provision_old_style(
            &s,
            &node,
            reservation("4-1", "volume", now, 40),
            Some(early),
        );
        s.flush().unwrap();
    }
    let s = reopen(dir.path());
    let written = s.outcomes.get("1-1").unwrap().unwrap();
    let written: Outcome = records::decode("1-1", &written).unwrap();
    let o = s.outcome("1-1").unwrap().unwrap();
    assert_eq!((o.state, o.at), (OutcomeState::Provisioned, written.at));
    assert_eq!(
        s.outcome_state("2-1").unwrap(),
        Some(OutcomeState::Provisioned)
    );
    assert_eq!(
        s.scheduled("2-1").unwrap().unwrap().timestamp_millis(),
        early.timestamp_millis(),
        "the rescheduled time, not the record's expiry"
    );
    assert_eq!(
        s.due(now + Duration::seconds(3), 10).unwrap(),
        vec!["2-1", "4-1"]
    );
    assert_eq!(s.cached_len(), 4);
    // Provisioned again (a repair) moves 2-1's one entry back to its expiry.
    provision(&s, &node, reservation("2-1", "volume", now, 20));
    assert_eq!(s.due(now + Duration::seconds(3), 10).unwrap(), vec!["4-1"]);
    assert_eq!(
        s.scheduled("2-1").unwrap().unwrap().timestamp_millis(),
        (now + Duration::seconds(20)).timestamp_millis()
    );
    // Rescheduled, and decommissioned: no entry left.
    s.reschedule("3-1", early).unwrap();
    for id in ["1-1", "3-1", "4-1"] {
        s.record_decommissioned(id, "volume", "", "c2ln", None)
            .unwrap();
    }
    assert_eq!(
        s.due(now + Duration::seconds(100), 10).unwrap(),
        vec!["2-1"]
    );
    assert_eq!(s.cached_len(), 1);
    assert_eq!(s.outcome_state("4-1").unwrap(), Some(OutcomeState::Deleted));
    assert_eq!(tree_lens(&s), (1, 4, 1, 0));
}

/// A cache record that cannot be decoded does not fail its decommission's
/// unit, and its expiry entry is not left behind.
#[test]
fn an_unreadable_cache_record_still_leaves_the_expiry_index() {
    let (_dir, s, node, now) = fresh();
    provision(&s, &node, reservation("1-1", "volume", now, 10));
    provision(&s, &node, reservation("2-1", "volume", now, 10));
    s.cache.insert("1-1", b"not json".to_vec()).unwrap();
    s.record_decommissioned("1-1", "volume", "", "c2ln", None)
        .unwrap();
    assert!(!s.is_cached("1-1").unwrap());
    assert_eq!(
        s.due(now + Duration::seconds(100), 10).unwrap(),
        vec!["2-1"]
    );
}

/// After a full `list_remembering` pass, `is_cached` answers from the ids
/// in memory (not the cache tree) and stays what the tree says through
/// provisionings, decommissions and a unit's staged and committed records.
#[test]
fn remembered_ids_answer_is_cached_through_every_commit() {
    let (_dir, s, node, now) = fresh();
    for id in ["1-1", "2-1", "3-1"] {
        provision(&s, &node, reservation(id, "volume", now, 60));
    }
    assert!(!s.remembers_cached_ids());
    let listed: Vec<String> = s
        .list_remembering()
        .map(|c| c.unwrap().reservation.id)
        .collect();
    assert_eq!(listed, ["1-1", "2-1", "3-1"], "the same records as list()");
    assert!(s.remembers_cached_ids());
    s.record_decommissioned("1-1", "volume", "", "c2ln", None)
        .unwrap();
    assert!(!s.is_cached("1-1").unwrap(), "decommissioned");
    provision(&s, &node, reservation("4-1", "volume", now, 60));
    assert!(s.is_cached("4-1").unwrap(), "provisioned after the pass");
    // Staged in a unit: the overlay answers; once committed, the ids do.
    let u = Unit::new(s.clone());
    u.decommissioned("3-1", "volume", "", "c2ln", None).unwrap();
    staged(&u, &node, signed("5-1", "sig5"));
    assert!(!s.is_cached("3-1").unwrap() && s.is_cached("5-1").unwrap());
    u.commit().unwrap();
    for id in ["1-1", "2-1", "3-1", "4-1", "5-1", "6-1"] {
        let tree = s.cache.contains_key(id).unwrap();
        assert_eq!(s.is_cached(id).unwrap(), tree, "{id}");
    }
    // The answer comes from memory: a record taken out of the tree behind
    // the store's back (never done otherwise) is still said cached.
    s.cache.remove("2-1").unwrap();
    assert!(s.is_cached("2-1").unwrap());
}

/// A pass left unfinished, or one a commit changed the cache during, is
/// not remembered (it may have missed an id): `is_cached` reads the tree.
#[test]
fn a_pass_unfinished_or_raced_by_a_commit_is_not_remembered() {
    let (_dir, s, node, now) = fresh();
    provision(&s, &node, reservation("1-1", "volume", now, 60));
    provision(&s, &node, reservation("2-1", "volume", now, 60));
    let mut pass = s.list_remembering();
    assert!(pass.next().is_some());
    drop(pass);
    assert!(!s.remembers_cached_ids(), "unfinished");
    let mut pass = s.list_remembering();
    assert!(pass.next().is_some());
    provision(&s, &node, reservation("0-1", "volume", now, 60));
    assert_eq!(pass.count(), 1, "the pass is past 0-1");
    assert!(!s.remembers_cached_ids(), "a commit during the pass");
    assert!(s.is_cached("0-1").unwrap());
    // A quiet pass is remembered, with what came before it.
    assert_eq!(s.list_remembering().count(), 3);
    assert!(s.remembers_cached_ids());
    assert!(s.is_cached("0-1").unwrap() && !s.is_cached("3-1").unwrap());
}

/// While a long commit runs, ids remembered before it and records it
/// applies are said cached at every moment (staged, then remembered).
#[test]
fn remembered_ids_never_miss_a_record_a_commit_applies() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let node = Identity::generate();
    provision(&s, &node, reservation("0-1", "volume", Utc::now(), 60));
    assert_eq!(s.list_remembering().count(), 1);
    let u = Unit::new(s.clone());
    for i in 1..=2_000 {
        staged(&u, &node, signed(&format!("{i}-1"), &format!("sig{i}")));
    }
    let commit = {
        let u = u.clone();
        std::thread::spawn(move || u.commit().unwrap())
    };
    let mut reads = 0;
    while !commit.is_finished() {
        for id in ["0-1", "1-1", "1000-1", "2000-1"] {
            assert!(s.is_cached(id).unwrap(), "{id} during the commit");
        }
        reads += 1;
    }
    commit.join().unwrap();
    assert!(reads > 0);
    assert!(s.remembers_cached_ids());
    assert!((0..=2_000).all(|i| s.is_cached(&format!("{i}-1")).unwrap()));
    assert!(!s.is_cached("2001-1").unwrap());
}

/// A reopen keeps what the store's users see: records, staged records (and
/// their commit after), remembered ids and the cache generation; with
/// another handle open it leaves the store as it is.
#[test]
fn a_reopen_is_the_same_store_to_its_users() {
    let (_dir, s, node, now) = fresh();
    provision(&s, &node, reservation("1-1", "volume", now, 60));
    provision(&s, &node, reservation("2-1", "volume", now, 60));
    assert_eq!(s.list_remembering().count(), 2);
    let generation = s.cache_generation();
    // Staged, not committed, and no unit left holding the store.
    staged(&Unit::new(s.clone()), &node, signed("3-1", "sig3"));
    let other = s.clone();
    let s = s.reopen().unwrap();
    assert!(
        Arc::ptr_eq(&s.overlay, &other.overlay),
        "another handle: kept"
    );
    drop(other);
    let s = s.reopen().unwrap();
    assert!(s.remembers_cached_ids());
    assert_eq!(s.cache_generation(), generation);
    assert!(
        s.is_cached("3-1").unwrap(),
        "staged, seen through the reopen"
    );
    assert_eq!(s.get("2-1").unwrap().unwrap().reservation.id, "2-1");
    Unit::new(s.clone()).commit().unwrap();
    assert!(s.is_cached("3-1").unwrap() && s.cache.contains_key("3-1").unwrap());
    s.record_decommissioned("1-1", "volume", "", "c2ln", None)
        .unwrap();
    assert!(!s.is_cached("1-1").unwrap());
    assert!(s.cache_generation() > generation);
    assert_eq!(s.cached_len(), 2);
}
