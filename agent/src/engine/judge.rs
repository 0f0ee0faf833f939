//! The judge: owns the decision about one reservation from a poll answer.
//! Pure: it reads the facts it needs through a [`View`] and returns a
//! [`Verdict`]; it does no I/O of its own, logs nothing and changes
//! nothing (the engine acts on the verdict).
//!
//! Checks run in the order PROTOCOL.md lists them: id grammar, cache and
//! past outcome (a reservation is judged once), deletion, version and
//! nonce, signature, replay, node, lifetime, type and data, then what the
//! node can take (a provisioner for the type, not draining, disk, capacity
//! and tenancy).

use std::time::Duration;

use chrono::{DateTime, Utc};
use reservation::{KeyCache, Reservation, Workload, WorkloadType};
use store::{Cached, OutcomeState};

use super::ahead::Checked;
use crate::capacity::Charge;
use crate::AgentError;

/// Largest `data` accepted, in bytes.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

/// What the judge may know besides the reservation: read-only facts of the
/// store, the capacity ledger and the node. The engine's view reads them
/// on demand, so the common case (cached, not a deletion) costs one lookup.
pub trait View {
    /// Whether `id` is cached (without decoding the record).
    fn is_cached(&self, id: &str) -> Result<bool, AgentError>;
    /// The cached copy of `id`, if the node runs it.
    fn cached(&self, id: &str) -> Result<Option<Cached>, AgentError>;
    /// How `id` was judged before, if it was.
    fn outcome(&self, id: &str) -> Result<Option<OutcomeState>, AgentError>;
    /// The id under which this user signature was first judged (the
    /// replay index).
    fn signature_owner(&self, signature: &str) -> Result<Option<String>, AgentError>;
    /// Whether a provisioner serves this type on this node.
    fn supports(&self, kind: WorkloadType) -> bool;
    /// Whether the operator drains the node.
    fn draining(&self) -> bool;
    /// Why new work cannot be taken for lack of disk, if so.
    fn disk_short(&self) -> Option<String>;
    /// What `w` would be charged if the ledger admits it for `r`, or the
    /// ledger's refusal.
    fn admit(&self, r: &Reservation, w: &Workload) -> Result<Result<Charge, String>, AgentError>;
}

/// The node's fixed rules and the time of judgement.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    pub node_id: &'a str,
    pub now: DateTime<Utc>,
    /// The longest `duration` accepted.
    pub max_duration: Duration,
    /// Users' keys decoded before (a memo: verification is the same with
    /// or without it).
    pub keys: Option<&'a KeyCache>,
    /// This reservation's user signature verified ahead (`ahead.rs`),
    /// if it was: used in place of verifying it again.
    pub checked: Checked,
}

impl Rules<'_> {
    /// Check 3 for `r`: the result verified ahead, else verify now.
    fn user_signature(&self, r: &Reservation) -> Result<(), String> {
        match &self.checked {
            Some(checked) => checked.clone(),
            None => r.verify_with(self.keys).map_err(|e| e.to_string()),
        }
    }
}

/// What to do with a reservation.
#[derive(Debug)]
pub enum Verdict {
    /// Its id is outside the grammar: nothing is signed about it.
    BadId,
    /// Cached already, and not a deletion: nothing to do.
    Running,
    /// Judged before (provisioned, refused or deleted): nothing to do.
    Judged(OutcomeState),
    /// A deletion its user did not sign: the workload, if any, goes on.
    /// `owner`: the cached owner, when the node runs it.
    Forged {
        error: String,
        owner: Option<String>,
    },
    /// A deletion signed by the cached owner: decommission it.
    Decommission(Box<Cached>),
    /// A signed deletion of a workload not running here: confirm it.
    /// `again`: it is marked deleted already (only the confirmation is
    /// queued again).
    Confirm { again: bool },
    /// Provision it; the ledger admitted `charge`.
    Provision {
        kind: WorkloadType,
        workload: Box<Workload>,
        charge: Charge,
    },
    /// Refuse it with this message. `verified`: its user signature
    /// verified, so it enters the replay index.
    Refuse { message: String, verified: bool },
}

impl Verdict {
    fn refuse(message: impl Into<String>) -> Self {
        Verdict::Refuse {
            message: message.into(),
            verified: true,
        }
    }

    fn unverified(message: impl Into<String>) -> Self {
        Verdict::Refuse {
            message: message.into(),
            verified: false,
        }
    }

    /// The user the reservation is known to belong to once judged: the
    /// cached owner, or its signer when the signature verified.
    pub fn user<'a>(&'a self, r: &'a Reservation) -> Option<&'a str> {
        match self {
            Verdict::Decommission(c) => Some(&c.reservation.user_id),
            Verdict::Forged { owner, .. } => owner.as_deref(),
            Verdict::Confirm { .. }
            | Verdict::Provision { .. }
            | Verdict::Refuse { verified: true, .. } => Some(&r.user_id),
            _ => None,
        }
    }
}

/// Judge `r` against what `view` knows. An `Err` is a cache that cannot be
/// read: the unit of work is given up (it comes back).
pub fn judge(r: &Reservation, view: &impl View, rules: &Rules) -> Result<Verdict, AgentError> {
    // 1. Nothing is signed about an id outside the grammar (a crafted id
    // could make signed bytes read as something else).
    if !reservation::valid_id(&r.id) {
        return Ok(Verdict::BadId);
    }
    // The common case at start (`from=0` lists everything): cached and not
    // a deletion, known without decoding the cached record.
    if !r.to_delete && view.is_cached(&r.id)? {
        return Ok(Verdict::Running);
    }
    // The cached copy is what the user signed and the node runs; the
    // incoming copy can only ask for its deletion, and only with the
    // cached owner's signature.
    if r.to_delete {
        if let Some(cached) = view.cached(&r.id)? {
            let mut check = cached.reservation.clone();
            check.delete_signature = r.delete_signature.clone();
            return Ok(match check.verify_delete_with(rules.keys) {
                Ok(()) => Verdict::Decommission(Box::new(cached)),
                Err(e) => Verdict::Forged {
                    error: e.to_string(),
                    owner: Some(cached.reservation.user_id),
                },
            });
        }
    }
    let outcome = view.outcome(&r.id)?;
    if r.to_delete {
        if let Err(error) = rules
            .user_signature(r)
            .and_then(|_| r.verify_delete_with(rules.keys).map_err(|e| e.to_string()))
        {
            return Ok(Verdict::Forged { error, owner: None });
        }
        return Ok(Verdict::Confirm {
            again: outcome == Some(OutcomeState::Deleted),
        });
    }
    if let Some(state) = outcome {
        return Ok(Verdict::Judged(state));
    }
    judge_new(r, view, rules)
}

/// Every check of a reservation never judged before, in PROTOCOL.md's
/// order (check 1, the id grammar, is done before).
fn judge_new(r: &Reservation, view: &impl View, rules: &Rules) -> Result<Verdict, AgentError> {
    // 2. Version 2 with a nonce.
    if let Err(e) = r.check_version() {
        return Ok(Verdict::unverified(e.to_string()));
    }
    // 3. The user's signature.
    if let Err(e) = rules.user_signature(r) {
        return Ok(Verdict::unverified(format!("{e} (user_id {})", r.user_id)));
    }
    // 4. Ids are the explorer's, not the user's: the same signed
    // reservation judged under another id is a replay, whether it was
    // provisioned or refused then.
    match view.signature_owner(&r.signature) {
        Ok(Some(first)) if first != r.id => {
            return Ok(Verdict::refuse(format!(
                "signature: this signed reservation was already judged as {first}; a replay under a new id is refused"
            )))
        }
        Ok(_) => {}
        Err(e) => return Ok(Verdict::unverified(format!("cache unreadable: {e}"))),
    }
    // 5. This node.
    if r.node_id != rules.node_id {
        return Ok(Verdict::refuse(format!(
            "node_id {} is not this node ({})",
            r.node_id, rules.node_id
        )));
    }
    // 6. Lifetime.
    if let Err(e) = r.check_lifetime(rules.now, rules.max_duration) {
        return Ok(Verdict::refuse(e.to_string()));
    }
    // 7. Type and data.
    let kind = match r.workload_type() {
        Ok(k) => k,
        Err(e) => return Ok(Verdict::refuse(e.to_string())),
    };
    if r.data.get().len() > MAX_DATA_BYTES {
        return Ok(Verdict::refuse(format!(
            "data: {} bytes, more than the {MAX_DATA_BYTES} bytes limit",
            r.data.get().len()
        )));
    }
    let w = match Workload::parse(kind, &r.data) {
        Ok(w) => w,
        Err(e) => return Ok(Verdict::refuse(e.to_string())),
    };
    // 8. What the node can take: the type, the operator's drain, disk,
    // capacity and tenancy.
    if !view.supports(kind) {
        return Ok(Verdict::refuse(format!(
            "workload type {kind} is not supported on this node"
        )));
    }
    if view.draining() {
        return Ok(Verdict::refuse(
            "node is draining: it takes no new work (its operator retires it); reserve on another node",
        ));
    }
    if let Some(msg) = view.disk_short() {
        return Ok(Verdict::refuse(msg));
    }
    Ok(match view.admit(r, &w)? {
        Ok(charge) => Verdict::Provision {
            kind,
            workload: Box::new(w),
            charge,
        },
        Err(msg) => Verdict::refuse(msg),
    })
}

#[cfg(test)]
mod tests {
    //! The judge alone, over an in-memory view: no store, no runtime.

    use std::cell::Cell;
    use std::collections::HashMap;

    use reservation::Identity;
    use serde_json::json;

    use super::*;

    /// Facts in memory; counts the store reads the judge makes.
    struct Facts {
        cached: HashMap<String, Cached>,
        outcomes: HashMap<String, OutcomeState>,
        signatures: HashMap<String, String>,
        index_unreadable: bool,
        kinds: Vec<WorkloadType>,
        draining: bool,
        disk_short: Option<String>,
        admit: Result<Charge, String>,
        reads: Cell<usize>,
    }

    impl Default for Facts {
        fn default() -> Self {
            Facts {
                cached: HashMap::new(),
                outcomes: HashMap::new(),
                signatures: HashMap::new(),
                index_unreadable: false,
                kinds: vec![WorkloadType::Volume],
                draining: false,
                disk_short: None,
                admit: Ok(Charge::default()),
                reads: Cell::new(0),
            }
        }
    }

    impl Facts {
        fn read(&self) {
            self.reads.set(self.reads.get() + 1);
        }
    }

    impl View for Facts {
        fn is_cached(&self, id: &str) -> Result<bool, AgentError> {
            self.read();
            Ok(self.cached.contains_key(id))
        }
        fn cached(&self, id: &str) -> Result<Option<Cached>, AgentError> {
            self.read();
            Ok(self.cached.get(id).cloned())
        }
        fn outcome(&self, id: &str) -> Result<Option<OutcomeState>, AgentError> {
            self.read();
            Ok(self.outcomes.get(id).copied())
        }
        fn signature_owner(&self, signature: &str) -> Result<Option<String>, AgentError> {
            self.read();
            if self.index_unreadable {
                return Err(AgentError::Other("disk on fire".into()));
            }
            Ok(self.signatures.get(signature).cloned())
        }
        fn supports(&self, kind: WorkloadType) -> bool {
            self.kinds.contains(&kind)
        }
        fn draining(&self) -> bool {
            self.draining
        }
        fn disk_short(&self) -> Option<String> {
            self.disk_short.clone()
        }
        fn admit(
            &self,
            _r: &Reservation,
            _w: &Workload,
        ) -> Result<Result<Charge, String>, AgentError> {
            Ok(self.admit.clone())
        }
    }

    struct World {
        node: Identity,
        user: Identity,
    }

    impl World {
        fn new() -> Self {
            World {
                node: Identity::generate(),
                user: Identity::generate(),
            }
        }

        fn volume(&self, id: &str) -> Reservation {
            let mut r: Reservation = serde_json::from_value(json!({
                "id": id, "version": 2, "node_id": self.node.id(), "user_id": self.user.id(),
                "type": "volume", "data": {"size": 1, "type": "SSD"},
                "created": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "duration": 3_600_000_000_000i64,
            }))
            .unwrap();
            self.user.sign_reservation(&mut r);
            r
        }

        fn deletion(&self, r: &Reservation) -> Reservation {
            let mut d = r.clone();
            d.to_delete = true;
            d.delete_signature = Some(self.user.sign_delete(&r.signature));
            d
        }

        fn cache(&self, facts: &mut Facts, r: &Reservation) {
            let res = self.node.ok_result(r, &json!({"id": "x"})).unwrap();
            facts
                .cached
                .insert(r.id.clone(), Cached::new(r.clone(), res));
        }

        fn judge(&self, r: &Reservation, facts: &Facts) -> Verdict {
            let rules = Rules {
                node_id: self.node.id(),
                now: Utc::now(),
                max_duration: Duration::from_secs(366 * 24 * 3600),
                keys: None,
                checked: None,
            };
            judge(r, facts, &rules).unwrap()
        }
    }

    fn refusal(v: Verdict) -> (String, bool) {
        match v {
            Verdict::Refuse { message, verified } => (message, verified),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn a_valid_new_reservation_is_provisioned_with_its_charge() {
        let w = World::new();
        let facts = Facts {
            admit: Ok(Charge {
                ssd_mib: 1024,
                ..Charge::default()
            }),
            ..Facts::default()
        };
        let r = w.volume("1-1");
        match w.judge(&r, &facts) {
            Verdict::Provision { kind, charge, .. } => {
                assert_eq!(kind, WorkloadType::Volume);
                assert_eq!(charge.ssd_mib, 1024);
            }
            other => panic!("{other:?}"),
        }
        // Cache, outcome, replay index: three reads for a new one.
        assert_eq!(facts.reads.get(), 3);
    }

    #[test]
    fn a_cached_reservation_costs_one_read() {
        let w = World::new();
        let mut facts = Facts::default();
        let r = w.volume("1-1");
        w.cache(&mut facts, &r);
        assert!(matches!(w.judge(&r, &facts), Verdict::Running));
        assert_eq!(facts.reads.get(), 1);
    }

    #[test]
    fn a_bad_id_reads_nothing() {
        let w = World::new();
        let facts = Facts::default();
        let mut r = w.volume("1-1");
        r.id = "1-1-1".into();
        assert!(matches!(w.judge(&r, &facts), Verdict::BadId));
        assert_eq!(facts.reads.get(), 0);
    }

    #[test]
    fn a_known_outcome_is_not_judged_again() {
        let w = World::new();
        let mut facts = Facts::default();
        facts.outcomes.insert("1-1".into(), OutcomeState::Refused);
        assert!(matches!(
            w.judge(&w.volume("1-1"), &facts),
            Verdict::Judged(OutcomeState::Refused)
        ));
    }

    #[test]
    fn a_replay_under_a_new_id_is_refused_and_an_unreadable_index_unverified() {
        let w = World::new();
        let mut facts = Facts::default();
        let r = w.volume("2-1");
        facts.signatures.insert(r.signature.clone(), "1-1".into());
        let (msg, verified) = refusal(w.judge(&r, &facts));
        assert!(msg.contains("already judged as 1-1"), "{msg}");
        assert!(verified);
        // The same id again is no replay.
        facts.signatures.insert(r.signature.clone(), "2-1".into());
        assert!(matches!(w.judge(&r, &facts), Verdict::Provision { .. }));
        let facts = Facts {
            index_unreadable: true,
            ..Facts::default()
        };
        let (msg, verified) = refusal(w.judge(&r, &facts));
        assert!(msg.starts_with("cache unreadable"), "{msg}");
        assert!(!verified, "not indexed when the index cannot be read");
    }

    #[test]
    fn what_the_node_can_take_is_checked_in_order() {
        let w = World::new();
        let r = w.volume("1-1");
        let cases = [
            (
                Facts {
                    kinds: vec![],
                    draining: true,
                    ..Facts::default()
                },
                "workload type volume is not supported on this node",
            ),
            (
                Facts {
                    draining: true,
                    disk_short: Some("not enough disk".into()),
                    ..Facts::default()
                },
                "node is draining",
            ),
            (
                Facts {
                    disk_short: Some("not enough disk".into()),
                    admit: Err("not enough ssd".into()),
                    ..Facts::default()
                },
                "not enough disk",
            ),
            (
                Facts {
                    admit: Err("not enough ssd".into()),
                    ..Facts::default()
                },
                "not enough ssd",
            ),
        ];
        for (facts, want) in cases {
            let (msg, verified) = refusal(w.judge(&r, &facts));
            assert!(msg.starts_with(want), "want {want:?}, got {msg:?}");
            assert!(verified);
        }
    }

    #[test]
    fn a_bad_signature_is_refused_unverified_before_anything_else() {
        let w = World::new();
        let mut r = w.volume("1-1");
        r.duration += 1;
        let facts = Facts {
            draining: true,
            ..Facts::default()
        };
        let (msg, verified) = refusal(w.judge(&r, &facts));
        assert!(msg.contains("signature"), "{msg}");
        assert!(!verified);
        assert!(w.judge(&r, &facts).user(&r).is_none());
    }

    #[test]
    fn deletions_need_the_cached_owners_signature() {
        let w = World::new();
        let mut facts = Facts::default();
        let r = w.volume("1-1");
        w.cache(&mut facts, &r);
        match w.judge(&w.deletion(&r), &facts) {
            Verdict::Decommission(c) => assert_eq!(c.reservation.id, "1-1"),
            other => panic!("{other:?}"),
        }
        // Signed by someone else, who also claims to be its user.
        let mallory = Identity::generate();
        let mut forged = r.clone();
        forged.to_delete = true;
        forged.user_id = mallory.id().to_string();
        forged.delete_signature = Some(mallory.sign_delete(&r.signature));
        let v = w.judge(&forged, &facts);
        assert_eq!(v.user(&forged), Some(w.user.id()), "the cached owner");
        assert!(matches!(v, Verdict::Forged { .. }));
    }

    #[test]
    fn a_signed_deletion_of_what_does_not_run_here_is_confirmed() {
        let w = World::new();
        let mut facts = Facts::default();
        let r = w.volume("1-1");
        assert!(matches!(
            w.judge(&w.deletion(&r), &facts),
            Verdict::Confirm { again: false }
        ));
        facts.outcomes.insert("1-1".into(), OutcomeState::Deleted);
        assert!(matches!(
            w.judge(&w.deletion(&r), &facts),
            Verdict::Confirm { again: true }
        ));
        let mut unsigned = r.clone();
        unsigned.to_delete = true;
        assert!(matches!(
            w.judge(&unsigned, &facts),
            Verdict::Forged { owner: None, .. }
        ));
    }
}
