//! Work ahead: owns running a unit's CPU-bound, independent steps (user
//! signatures to verify before judgement, the node's results to sign
//! before recording) on the blocking pool, on every core, while the engine
//! goes through the same items one at a time, in their order.
//!
//! Why: `verify_strict` and signing are most of a reservation's CPU time,
//! and each is a pure function of one item. So the items are cut into
//! chunks, at most one chunk per core is worked at a time, and the engine
//! takes the items back in their order, each with its own result: a
//! chunk's items travel into its task and come back, in the same order,
//! each filled in place. Nothing here judges, writes or reorders anything;
//! an item whose step was not done ahead (a small batch, a task that
//! panicked) comes back as it went, and the engine does the step itself.

use std::collections::VecDeque;
use std::sync::Arc;

use reservation::{KeyCache, Reservation};
use store::Store;
use tokio::task::JoinHandle;

use crate::AgentError;

/// The most items one task takes.
const CHUNK: usize = 64;

/// Batches smaller than this are left to the engine (a task costs more
/// than it saves).
pub const INLINE_BELOW: usize = 8;

/// The step done ahead on each item, in place.
pub type Step<T> = Arc<dyn Fn(&mut T) + Send + Sync>;

/// A batch of items in order, worked chunk by chunk ahead of the engine.
pub struct Ahead<T> {
    /// Chunks started, in order.
    running: VecDeque<JoinHandle<Vec<T>>>,
    /// Chunks not started yet, in order.
    waiting: VecDeque<Vec<T>>,
    /// The chunk being handed out.
    ready: std::vec::IntoIter<T>,
    /// How many chunks are worked at once.
    window: usize,
    step: Step<T>,
}

impl<T: Send + 'static> Ahead<T> {
    /// Start `step` on `items` (in the order they are to be taken), unless
    /// there are fewer than [`INLINE_BELOW`], at most `window` chunks at
    /// once (the cores, counted once by the engine: the count reads the
    /// cgroup's files).
    pub fn start(items: Vec<T>, step: Step<T>, window: usize) -> Self {
        let window = window.max(1);
        let mut a = Ahead {
            running: VecDeque::new(),
            waiting: VecDeque::new(),
            ready: Vec::new().into_iter(),
            window,
            step,
        };
        if items.len() < INLINE_BELOW {
            a.ready = items.into_iter();
            return a;
        }
        // Small chunks for a small batch, so the engine's first item is
        // ready soon and every core has a share.
        let size = (items.len() / (4 * window)).clamp(1, CHUNK);
        let mut rest = items.into_iter();
        loop {
            let chunk: Vec<T> = rest.by_ref().take(size).collect();
            if chunk.is_empty() {
                break;
            }
            a.waiting.push_back(chunk);
        }
        while a.running.len() < a.window && a.spawn_next() {}
        a
    }

    /// Start the next waiting chunk, if any.
    fn spawn_next(&mut self) -> bool {
        let Some(mut chunk) = self.waiting.pop_front() else {
            return false;
        };
        let step = self.step.clone();
        self.running.push_back(tokio::task::spawn_blocking(move || {
            // A panic (none is known) leaves the rest of the chunk to the
            // engine rather than losing it.
            for item in chunk.iter_mut() {
                let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(item)));
                if done.is_err() {
                    break;
                }
            }
            chunk
        }));
        true
    }

    /// The next item, its step done if it was; `None` at the end. An `Err`
    /// only if the runtime dropped a task (it is shutting down): the rest
    /// of the batch is not taken, as after a cache error.
    pub async fn next(&mut self) -> Result<Option<T>, AgentError> {
        loop {
            if let Some(next) = self.ready.next() {
                return Ok(Some(next));
            }
            let Some(task) = self.running.pop_front() else {
                return Ok(None);
            };
            self.spawn_next();
            let done = task
                .await
                .map_err(|e| AgentError::Other(format!("work ahead did not finish: {e}")))?;
            self.ready = done.into_iter();
        }
    }
}

/// The result of verifying a reservation's user signature ahead (the
/// error's text), or `None` when it was not verified ahead.
pub type Checked = Option<Result<(), String>>;

/// The step that verifies a poll answer's user signatures ahead of the
/// judge. `store` is only read, for hints: a reservation the judge will
/// not verify (see [`worth_verifying`]) is not verified here either.
pub fn precheck(keys: Arc<KeyCache>, store: Store) -> Step<(Reservation, Checked)> {
    Arc::new(move |(r, checked): &mut (Reservation, Checked)| {
        if worth_verifying(r, &store) {
            *checked = Some(r.verify_with(Some(&keys)).map_err(|e| e.to_string()));
        }
    })
}

/// Whether the judge will verify `r`'s user signature, as far as one can
/// tell before judging: its id is in the grammar, its version is 2, and it
/// is neither cached nor (unless a deletion) judged before. A wrong guess
/// costs time only: the judge verifies what was not verified here.
fn worth_verifying(r: &Reservation, store: &Store) -> bool {
    if !reservation::valid_id(&r.id) || r.check_version().is_err() {
        return false;
    }
    if store.is_cached(&r.id).unwrap_or(true) {
        return false;
    }
    r.to_delete || matches!(store.outcome_state(&r.id), Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reservation::Identity;
    use serde_json::json;

    fn signed(user: &Identity, id: &str, n: usize) -> Reservation {
        let mut r: Reservation = serde_json::from_value(json!({
            "id": id, "version": 2, "node_id": "node", "user_id": user.id(), "type": "volume",
            "data": {"size": n, "type": "SSD"}, "created": "2026-01-01T00:00:00Z",
            "duration": 1_000_000_000i64,
        }))
        .unwrap();
        user.sign_reservation(&mut r);
        r
    }

    async fn run(rs: Vec<Reservation>, store: Store) -> Vec<(Reservation, Checked)> {
        let items = rs.into_iter().map(|r| (r, None)).collect();
        let mut a = Ahead::start(items, precheck(Arc::new(KeyCache::new()), store), 2);
        let mut got = Vec::new();
        while let Some(item) = a.next().await.unwrap() {
            got.push(item);
        }
        got
    }

    #[tokio::test]
    async fn each_reservation_comes_back_in_order_with_its_own_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let user = Identity::generate();
        let mut rs: Vec<Reservation> = (1..=300)
            .map(|i| signed(&user, &format!("{i}-1"), i))
            .collect();
        // Forged: data changed after signing; a signature moved from
        // another reservation; one signed by someone else under the user's
        // id. And an id outside the grammar (not verified ahead).
        rs[100].data =
            serde_json::value::RawValue::from_string(r#"{"size":9,"type":"SSD"}"#.into()).unwrap();
        rs[170].signature = rs[171].signature.clone();
        let mallory = Identity::generate();
        let mut stolen = signed(&mallory, "201-1", 201);
        stolen.user_id = user.id().to_string();
        rs[200] = stolen;
        rs[250].id = "x".into();
        let want: Vec<String> = rs.iter().map(|r| r.id.clone()).collect();
        let got = run(rs, store).await;
        for (i, (r, checked)) in got.iter().enumerate() {
            match i {
                100 | 170 | 200 => {
                    let e = checked.clone().expect("verified ahead").unwrap_err();
                    assert!(e.contains("does not verify"), "{i}: {e}");
                }
                250 => assert!(checked.is_none(), "a bad id is left to the judge"),
                _ => assert_eq!(checked, &Some(Ok(())), "{i}"),
            }
            // The result is the reservation's own: verifying it again
            // agrees.
            if let Some(v) = checked {
                assert_eq!(v.is_ok(), r.verify().is_ok(), "{}", r.id);
            }
        }
        let ids: Vec<String> = got.into_iter().map(|(r, _)| r.id).collect();
        assert_eq!(ids, want, "same reservations, same order");
    }

    #[tokio::test]
    async fn a_small_batch_or_a_known_reservation_is_left_to_the_judge() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let user = Identity::generate();
        let rs = vec![signed(&user, "1-1", 1), signed(&user, "2-1", 2)];
        let got = run(rs, store.clone()).await;
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(_, c)| c.is_none()));
        // Judged before: not verified ahead (the judge skips it).
        let res = Identity::generate().error_result(&got[0].0, "no");
        store.record_refused(&res, "").unwrap();
        let rs: Vec<Reservation> = (1..=20)
            .map(|i| signed(&user, &format!("{i}-1"), i))
            .collect();
        let got = run(rs, store).await;
        assert!(got[0].1.is_none());
        assert!(got[1..].iter().all(|(_, c)| c == &Some(Ok(()))));
    }

    #[tokio::test]
    async fn a_panicking_step_hands_the_items_back_undone() {
        let items: Vec<(usize, bool)> = (0..200).map(|i| (i, false)).collect();
        let step: Step<(usize, bool)> = Arc::new(|(i, done): &mut (usize, bool)| {
            assert!(*i != 70, "boom");
            *done = true;
        });
        let mut a = Ahead::start(items, step, 2);
        let mut got = Vec::new();
        while let Some(item) = a.next().await.unwrap() {
            got.push(item);
        }
        assert_eq!(got.len(), 200, "nothing lost");
        assert!(
            got.iter().enumerate().all(|(n, (i, _))| n == *i),
            "in order"
        );
        assert!(!got[70].1, "the item that panicked is handed back undone");
        assert!(got[69].1 && got[199].1, "other chunks are done");
    }
}
