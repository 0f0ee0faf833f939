//! Work in flight across units: the jobs running (started by this or an
//! earlier poll answer), the reservations parked behind one of them, and
//! the poll cursors that wait for both.
//!
//! Why: a slow job (an image pull from a registry that hangs) must hold up
//! nothing but its own workload, so the engine takes the next answer while
//! it runs. Three rules keep that as safe as running one answer at a time:
//! - a reservation about a running or parked one (same id: a deletion;
//!   same signature: a replay) is parked and judged only once that one is
//!   recorded, so the judge still sees every reservation in order per id;
//! - a new job waits for the running jobs it depends on, as it waits for
//!   the jobs of its own answer;
//! - a poll cursor is recorded only once every reservation of its answer
//!   and of the answers before it is recorded, so a restart never skips
//!   work that was handed over but not done.
//!
//! - what is parked is bounded: an exact copy of a parked reservation is
//!   dropped (an honest explorer hands a pending deletion over again on
//!   every poll while a slow pull runs), and past [`MAX_PARKED`] the newest
//!   is dropped with a warning (a hostile explorer sending one id again and
//!   again with forged signatures). Nothing is lost: the explorer hands a
//!   deletion over until the node confirms it, and a restart's resync
//!   brings back the rest.
//!
//! This file knows no Docker and no store; the engine asks and acts.

use std::collections::{BTreeMap, HashSet, VecDeque};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use reservation::Reservation;
use tokio::sync::watch;

/// One reservation's place in flight, from the poll answer that brought it
/// until it is recorded. Increasing: a later ticket was handed over later.
pub type Ticket = u64;

/// At most this many reservations wait behind running work; past it the
/// newest is dropped (see the module's last rule).
pub const MAX_PARKED: usize = 1024;

/// What [`InFlight::park`] did with a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parking {
    /// It waits for the ticket it was parked behind.
    Parked,
    /// An exact copy already waits: this one is dropped.
    Duplicate,
    /// [`MAX_PARKED`] already wait: this one is dropped.
    Full,
}

/// Whether `a` and `b` are the same reservation byte for byte (so judging
/// both gives one outcome twice).
fn same_bytes(a: &Reservation, b: &Reservation) -> bool {
    a.id == b.id
        && a.signature == b.signature
        && a.to_delete == b.to_delete
        && a.delete_signature == b.delete_signature
        && a.version == b.version
        && a.node_id == b.node_id
        && a.user_id == b.user_id
        && a.kind == b.kind
        && a.data.get() == b.data.get()
        && a.created == b.created
        && a.duration == b.duration
        && a.nonce == b.nonce
}

/// A job started and not recorded yet.
pub struct Running {
    pub ticket: Ticket,
    pub reservation: Reservation,
    /// A provisioning (else a decommission).
    pub provision: bool,
    /// The Docker objects it makes, and the ones of others it uses
    /// (`registry::objects` and `registry::uses`).
    pub objects: Vec<String>,
    pub uses: Vec<String>,
    /// Becomes true when the job ran (before it is recorded).
    pub done: watch::Receiver<bool>,
}

/// The jobs in flight, what is parked behind them and the cursors waiting.
pub struct InFlight<T> {
    next: Ticket,
    /// By ticket: settling one is O(log n), not a shift of all the others
    /// (10,000 jobs of one answer made that quadratic).
    running: BTreeMap<Ticket, Running>,
    futures: FuturesUnordered<BoxFuture<'static, (Ticket, T)>>,
    /// (own ticket, the ticket it waits for, the reservation), in order.
    parked: Vec<(Ticket, Ticket, Reservation)>,
    /// Each answer's cursor with its tickets not recorded yet, in order.
    cursors: VecDeque<(u64, HashSet<Ticket>)>,
}

impl<T: Send + 'static> InFlight<T> {
    pub fn new() -> Self {
        InFlight {
            next: 1,
            running: BTreeMap::new(),
            futures: FuturesUnordered::new(),
            parked: Vec::new(),
            cursors: VecDeque::new(),
        }
    }

    /// A new ticket.
    pub fn ticket(&mut self) -> Ticket {
        let t = self.next;
        self.next += 1;
        t
    }

    /// Whether nothing runs and nothing is parked.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.parked.is_empty()
    }

    /// How many jobs run now.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// The running jobs, in ticket order.
    pub fn running(&self) -> impl Iterator<Item = &Running> {
        self.running.values()
    }

    /// The latest running or parked reservation handed over before `r`
    /// (ticket `own`) with the same id or the same signature: `r` must be
    /// judged after it is recorded.
    pub fn blocker(&self, own: Ticket, r: &Reservation) -> Option<Ticket> {
        let same = |o: &Reservation| o.id == r.id || o.signature == r.signature;
        let running = self
            .running
            .range(..own)
            .filter(|(_, j)| same(&j.reservation))
            .map(|(t, _)| *t);
        let parked = self
            .parked
            .iter()
            .filter(|(t, _, p)| *t < own && same(p))
            .map(|(t, _, _)| *t);
        running.chain(parked).max()
    }

    /// Whether a reservation with this id runs or is parked.
    pub fn holds_id(&self, id: &str) -> bool {
        self.running.values().any(|j| j.reservation.id == id)
            || self.parked.iter().any(|(_, _, p)| p.id == id)
    }

    /// Whether this ticket is still in flight (running or parked).
    pub fn pending(&self, t: Ticket) -> bool {
        self.running.contains_key(&t) || self.parked.iter().any(|(p, _, _)| *p == t)
    }

    /// Park `r` (ticket `own`) until ticket `after` is recorded, unless an
    /// exact copy already waits or [`MAX_PARKED`] do.
    pub fn park(&mut self, own: Ticket, after: Ticket, r: Reservation) -> Parking {
        if self.parked.iter().any(|(_, _, p)| same_bytes(p, &r)) {
            return Parking::Duplicate;
        }
        if self.parked.len() >= MAX_PARKED {
            return Parking::Full;
        }
        self.parked.push((own, after, r));
        Parking::Parked
    }

    /// How many reservations are parked.
    #[cfg(test)]
    pub fn parked_len(&self) -> usize {
        self.parked.len()
    }

    /// Start a job: `run` is its whole work, `info` says what it is.
    pub fn start(&mut self, info: Running, run: BoxFuture<'static, T>) {
        let t = info.ticket;
        self.running.insert(t, info);
        self.futures.push(Box::pin(async move { (t, run.await) }));
    }

    /// The next job to finish; pending forever while none runs.
    pub async fn next_done(&mut self) -> (Ticket, T) {
        match self.futures.next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    /// A job that finished now, if one did (without waiting).
    pub fn try_done(&mut self) -> Option<(Ticket, T)> {
        use futures_util::FutureExt;
        self.futures.next().now_or_never().flatten()
    }

    /// Ticket `t` is recorded: it leaves the running jobs and its answer's
    /// set; the reservations parked behind it are handed back in order.
    pub fn settle(&mut self, t: Ticket) -> Vec<(Ticket, Reservation)> {
        self.running.remove(&t);
        for (_, set) in self.cursors.iter_mut() {
            set.remove(&t);
        }
        let (free, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(_, after, _)| *after == t);
        self.parked = kept;
        free.into_iter().map(|(own, _, r)| (own, r)).collect()
    }

    /// An answer was judged: its cursor waits for `tickets` (those still in
    /// flight count).
    pub fn answered(&mut self, cursor: u64, tickets: impl IntoIterator<Item = Ticket>) {
        let set: HashSet<Ticket> = tickets.into_iter().filter(|t| self.pending(*t)).collect();
        self.cursors.push_back((cursor, set));
    }

    /// The latest cursor whose answer, and every answer before it, is all
    /// recorded (to record now), if any became so.
    pub fn ready_cursor(&mut self) -> Option<u64> {
        let mut ready = None;
        while self.cursors.front().is_some_and(|(_, set)| set.is_empty()) {
            ready = self.cursors.pop_front().map(|(c, _)| c);
        }
        ready
    }

    /// The ids of what is in flight (for a log line when abandoning it).
    pub fn ids(&self) -> Vec<String> {
        let running = self.running.values().map(|j| j.reservation.id.clone());
        let parked = self.parked.iter().map(|(_, _, r)| r.id.clone());
        running.chain(parked).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, sig: &str) -> Reservation {
        serde_json::from_value(serde_json::json!({
            "id": id, "version": 2, "node_id": "n", "user_id": "u", "type": "volume",
            "data": {}, "created": "2026-01-01T00:00:00Z", "duration": 1,
            "signature": sig,
        }))
        .unwrap()
    }

    fn running(t: Ticket, res: Reservation) -> (Running, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let info = Running {
            ticket: t,
            reservation: res,
            provision: true,
            objects: vec![],
            uses: vec![],
            done: rx,
        };
        (info, tx)
    }

    #[tokio::test]
    async fn a_cursor_waits_for_every_earlier_answer() {
        let mut f: InFlight<()> = InFlight::new();
        let (a, b) = (f.ticket(), f.ticket());
        let (ia, _ta) = running(a, r("1-1", "s1"));
        f.start(ia, Box::pin(std::future::pending()));
        let (ib, _tb) = running(b, r("2-1", "s2"));
        f.start(ib, Box::pin(async {}));
        f.answered(5, [a]);
        f.answered(9, [b]);
        // The second answer is done first: its cursor must not be recorded
        // while the first answer's job still runs.
        let (done, ()) = f.next_done().await;
        assert_eq!(done, b);
        assert!(f.settle(b).is_empty());
        assert_eq!(f.ready_cursor(), None);
        f.settle(a);
        assert_eq!(f.ready_cursor(), Some(9));
        assert!(f.is_idle());
    }

    #[test]
    fn a_deletion_or_replay_parks_behind_the_latest_of_its_id() {
        let mut f: InFlight<()> = InFlight::new();
        let a = f.ticket();
        let (ia, _ta) = running(a, r("1-1", "s1"));
        f.start(ia, Box::pin(async {}));
        // The deletion of 1-1 parks behind the running job; a replay of its
        // signature under a new id parks behind the deletion.
        let del = f.ticket();
        assert_eq!(f.blocker(del, &r("1-1", "s1")), Some(a));
        assert_eq!(f.park(del, a, r("1-1", "s1")), Parking::Parked);
        let replay = f.ticket();
        assert_eq!(f.blocker(replay, &r("7-1", "s1")), Some(del));
        assert_eq!(f.park(replay, del, r("7-1", "s1")), Parking::Parked);
        let other = f.ticket();
        assert_eq!(f.blocker(other, &r("8-1", "other")), None);
        // Freed, the deletion is not held by the replay parked after it.
        assert_eq!(f.blocker(del, &r("1-1", "s1")), Some(a));
        f.settle(other);
        f.answered(3, [a, del, replay]);
        let freed = f.settle(a);
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[0].0, del);
        assert_eq!(f.ready_cursor(), None, "the replay is still parked");
        assert_eq!(f.settle(del)[0].0, replay);
        f.settle(replay);
        assert_eq!(f.ready_cursor(), Some(3));
    }

    #[test]
    fn copies_are_dropped_and_what_waits_is_bounded() {
        let mut f: InFlight<()> = InFlight::new();
        let a = f.ticket();
        let (ia, _ta) = running(a, r("1-1", "s1"));
        f.start(ia, Box::pin(async {}));
        // The same deletion handed over on every poll waits once.
        let mut del = r("1-1", "s1");
        del.to_delete = true;
        del.delete_signature = Some("d".into());
        for _ in 0..5 {
            let t = f.ticket();
            let after = f.blocker(t, &del).unwrap();
            let want = if f.parked_len() == 0 {
                Parking::Parked
            } else {
                Parking::Duplicate
            };
            assert_eq!(f.park(t, after, del.clone()), want);
        }
        assert_eq!(f.parked_len(), 1);
        // Forged deletions, each with other bytes: bounded.
        for i in 0..MAX_PARKED + 10 {
            let mut forged = del.clone();
            forged.delete_signature = Some(format!("forged-{i}"));
            let t = f.ticket();
            let after = f.blocker(t, &forged).unwrap();
            let got = f.park(t, after, forged);
            let want = if i + 1 < MAX_PARKED {
                Parking::Parked
            } else {
                Parking::Full
            };
            assert_eq!(got, want, "at {i}");
        }
        assert_eq!(f.parked_len(), MAX_PARKED);
        // Only the first waits behind the job (each other behind the one
        // before it), and it is the copy that was kept.
        let freed = f.settle(a);
        assert_eq!(freed.len(), 1, "the first waits behind the job");
        assert_eq!(freed[0].1.delete_signature.as_deref(), Some("d"));
    }
}
