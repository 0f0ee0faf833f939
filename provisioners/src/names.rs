//! Docker object names and labels derived from reservations, and the
//! node scope ([`Names`]) they are made in.
//!
//! Names are a pure function of the node scope and the reservation
//! (`agent-ct-12-1`, `agent-vol-12-3`, `agent-net-<node-local network
//! id>`, with `agent-<node>-` in place of `agent-` when scoped), which is
//! what makes provisioning idempotent: a second run looks the name up
//! before it creates anything. The scope is a value the provisioners and
//! the crash watch are given, never process state. Ids from the wire are
//! checked against the protocol's `<number>-<number>` shape before they
//! reach a Docker URL or a file path.

use reservation::{Reservation, WorkloadType};

use crate::docker::Labels;
use crate::{ProvisionError, LABEL_RESERVATION, LABEL_TYPE, LABEL_USER};

/// Label with a volume's disk type, `HDD` or `SSD` (counted by capacity).
pub const LABEL_DISK: &str = "io.agent.disk";
/// Label with a volume's size in GiB.
pub const LABEL_SIZE_GIB: &str = "io.agent.size_gib";
/// Label with the user's name of a network (the Docker name is the
/// node-local id, which hides it).
pub const LABEL_NETWORK_NAME: &str = "io.agent.network";

/// Prefix of every Docker object name the agent creates.
pub const PREFIX: &str = "agent-";

/// Label with the node id that owns an object (set by a [`Names`] scoped
/// to a node).
pub const LABEL_NODE: &str = "io.agent.node";

/// How this node names, labels and filters its Docker objects.
///
/// Scoped to a node ([`Names::for_node`], what the agent runs with), names
/// are `agent-<first 8 characters of the node id>-ct-<id>` and every
/// object carries and is filtered by the `io.agent.node` label: two agents
/// sharing one Docker engine (test runs, a node moved to a new key) then
/// never adopt, reuse or reap each other's objects. Unscoped
/// ([`Names::unscoped`], the default, for tests), names are
/// `agent-ct-<id>` and filters see every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    node: Option<String>,
}

impl Names {
    /// Names and filters scoped to node `node_id`.
    pub fn for_node(node_id: &str) -> Self {
        Names {
            node: Some(node_id.to_string()),
        }
    }

    /// Names and filters of no node in particular.
    pub fn unscoped() -> Self {
        Names::default()
    }

    /// `agent-` or `agent-<first 8 characters of the node id>-`: what
    /// every name starts with.
    pub fn prefix(&self) -> String {
        match &self.node {
            Some(n) => format!("{PREFIX}{}-", n.chars().take(8).collect::<String>()),
            None => PREFIX.to_string(),
        }
    }

    /// Whether an object's labels say it belongs to this node (always true
    /// when unscoped).
    pub fn is_ours(&self, labels: &Labels) -> bool {
        self.node_labels()
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }

    /// The node label (to add to an object's labels, or to filter by), when
    /// scoped.
    pub fn node_labels(&self) -> Vec<(String, String)> {
        self.node
            .as_ref()
            .map(|n| vec![(LABEL_NODE.to_string(), n.clone())])
            .unwrap_or_default()
    }

    /// Docker name of an object of `kind` (`k8s`, ...) of reservation `id`.
    pub fn scoped(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}-{id}", self.prefix())
    }

    /// Docker name of the container of reservation `id`.
    pub fn container_name(&self, id: &str) -> String {
        self.scoped("ct", id)
    }

    /// Docker name of the volume of reservation `id`.
    pub fn volume_name(&self, id: &str) -> String {
        self.scoped("vol", id)
    }

    /// Docker name of `user_id`'s network `name` on this node: the
    /// node-local id, so two users' networks of one name are two objects.
    pub fn network_name(&self, user_id: &str, name: &str) -> String {
        self.scoped("net", &reservation::network_local_id(user_id, name))
    }

    /// The ownership labels of an object of reservation `r`: its id, user,
    /// type, signature hash and node.
    pub fn labels(&self, r: &Reservation, kind: WorkloadType) -> Labels {
        let mut l = Labels::from([
            (LABEL_RESERVATION.to_string(), r.id.clone()),
            (LABEL_USER.to_string(), r.user_id.clone()),
            (LABEL_TYPE.to_string(), kind.as_str().to_string()),
            (LABEL_SIGNATURE.to_string(), signature_hash(r)),
        ]);
        l.extend(self.node_labels());
        l
    }

    /// Whether an existing object with these labels was made for exactly
    /// this signed reservation `r` (same id, user and signature, on this
    /// node), so a provisioning cut short by a crash may adopt it. Anything
    /// else found under `r`'s name (another user's object, a hand-made one,
    /// one of an earlier reservation the explorer gave the same id) must
    /// not be reused.
    pub fn adoptable(&self, existing: &Labels, r: &Reservation) -> bool {
        self.matches_reservation(existing, r)
    }

    /// Whether an object under `r`'s name is the live object of another
    /// signed reservation made by this node (it carries this node's label
    /// and a signature hash, but not `r`'s). The explorer assigns ids, so a
    /// hostile one can hand a second reservation the id of a running one:
    /// that must be refused, never "replaced" (which would destroy another
    /// tenant's workload). Hand-made objects, and objects without a
    /// signature label, are not held: they may be replaced.
    pub fn held_by_another(&self, existing: &Labels, r: &Reservation) -> bool {
        self.is_ours(existing)
            && existing.contains_key(LABEL_SIGNATURE)
            && !self.matches_reservation(existing, r)
    }

    fn matches_reservation(&self, existing: &Labels, r: &Reservation) -> bool {
        let is = |k: &str, v: &str| existing.get(k).is_some_and(|l| l == v);
        is(LABEL_RESERVATION, &r.id)
            && is(LABEL_USER, &r.user_id)
            && is(LABEL_SIGNATURE, &signature_hash(r))
            && self.is_ours(existing)
    }

    /// The label filter matching every object of type `kind`.
    pub fn type_filter(&self, kind: WorkloadType) -> Vec<(String, String)> {
        let mut f = vec![(LABEL_TYPE.to_string(), kind.as_str().to_string())];
        f.extend(self.node_labels());
        f
    }

    /// The label filter matching objects of type `kind` of reservation `id`.
    pub fn id_filter(&self, kind: WorkloadType, id: &str) -> Vec<(String, String)> {
        let mut f = vec![
            (LABEL_TYPE.to_string(), kind.as_str().to_string()),
            (LABEL_RESERVATION.to_string(), id.to_string()),
        ];
        f.extend(self.node_labels());
        f
    }
}

/// Check a reservation or volume id has the protocol's shape
/// `<u64>-<u64>`, so it is safe in a Docker name, URL and file name.
pub fn check_id(field: &str, id: &str) -> Result<(), ProvisionError> {
    let ok = id
        .split_once('-')
        .map(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
        .unwrap_or(false)
        && id.bytes().all(|c| c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::Refused(format!(
            "{field} {:?} is not a reservation id of the form <number>-<number>",
            id.chars().take(64).collect::<String>()
        )))
    }
}

/// Label with a hash of the user signature of the reservation that made
/// an object: ids are the explorer's, so only the signature says which
/// signed reservation (and so which user) an object belongs to.
pub const LABEL_SIGNATURE: &str = "io.agent.sig";

/// The value of [`LABEL_SIGNATURE`] for `r`: hex of md5 over the signature
/// text (an identifier short enough for a label, not a secret: the
/// signature itself is public).
pub fn signature_hash(r: &Reservation) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(r.signature.as_bytes()))
}

/// The refusal when [`Names::held_by_another`] holds. It names nothing of the
/// other reservation: that is another tenant's business.
pub fn held_error(r: &Reservation, what: &str) -> ProvisionError {
    ProvisionError::Refused(format!(
        "id: the {what} of reservation {} is held by another reservation on this node; refused (the explorer reused an id)",
        r.id
    ))
}

/// The label `key` of `labels`, or `""`.
pub fn label<'a>(labels: &'a Labels, key: &str) -> &'a str {
    labels.get(key).map(String::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("id", "12-1").is_ok());
        for bad in [
            "", "12", "12-", "-1", "1-2-3", "../1-2", "1-2/x", "a-b", "+1-2", "1- 2",
        ] {
            let e = check_id("id", bad).unwrap_err().to_string();
            assert!(e.starts_with("id "), "{bad}: {e}");
        }
    }

    #[test]
    fn names() {
        let n = Names::unscoped();
        assert_eq!(n.container_name("12-1"), "agent-ct-12-1");
        assert_eq!(n.volume_name("12-3"), "agent-vol-12-3");
        let a = n.network_name("alice", "net");
        assert!(a.starts_with("agent-net-") && a.len() == "agent-net-".len() + 13);
        assert_ne!(a, n.network_name("bob", "net"));
        assert!(n.node_labels().is_empty() && n.is_ours(&Labels::new()));
    }

    #[test]
    fn scoped_names_and_labels() {
        let n = Names::for_node("ABCDEFGHIJK");
        assert_eq!(n.prefix(), "agent-ABCDEFGH-");
        assert_eq!(n.container_name("12-1"), "agent-ABCDEFGH-ct-12-1");
        assert_eq!(n.scoped("k8s", "12-1"), "agent-ABCDEFGH-k8s-12-1");
        let mine = Labels::from([(LABEL_NODE.to_string(), "ABCDEFGHIJK".to_string())]);
        let theirs = Labels::from([(LABEL_NODE.to_string(), "other".to_string())]);
        assert!(n.is_ours(&mine) && !n.is_ours(&theirs) && !n.is_ours(&Labels::new()));
        assert_eq!(
            n.type_filter(WorkloadType::Volume),
            vec![
                (LABEL_TYPE.to_string(), "volume".to_string()),
                (LABEL_NODE.to_string(), "ABCDEFGHIJK".to_string())
            ]
        );
    }
}
