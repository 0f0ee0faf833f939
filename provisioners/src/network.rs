//! The `network` provisioner: one Docker bridge network per node-local
//! network id, named `agent-net-<network_local_id(user_id, name)>`.
//!
//! The subnet is this node's `net_resources` entry. Refused: no entry for
//! this node, a subnet outside `ip_range`, a subnet overlapping any other
//! network on this node (another user's, the user's own other network, or
//! Docker's own bridges), and a second reservation of a network the user
//! already has here. Docker's bridge driver isolates bridge networks from
//! each other (its DOCKER-ISOLATION iptables chains), so two users'
//! networks cannot reach each other; the integration tests prove it.
//! Result `data`: `null`.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use reservation::workloads::Network;
use reservation::{Reservation, Workload, WorkloadType};

use crate::docker::{ContainerFilter, Docker, NetworkSpec};
use crate::names::{self, label, LABEL_NETWORK_NAME};
use crate::{ProvisionError, Provisioner, LABEL_RESERVATION, LABEL_TYPE, LABEL_USER};

/// Provisions `network` workloads for node `node_id`.
pub struct NetworkProvisioner {
    docker: Arc<dyn Docker>,
    node_id: String,
}

impl NetworkProvisioner {
    pub fn new(docker: Arc<dyn Docker>, node_id: impl Into<String>) -> Self {
        Self {
            docker,
            node_id: node_id.into(),
        }
    }

    /// This node's subnet of `n`, checked against `ip_range` and size.
    fn subnet(&self, n: &Network) -> Result<Ipv4Net, ProvisionError> {
        let refused = |e: reservation::Error| ProvisionError::Refused(e.to_string());
        let range = n.validate().map_err(refused)?;
        let sub = n.subnet_for(&self.node_id).map_err(refused)?;
        if !range.contains(&sub) {
            return Err(ProvisionError::Refused(format!(
                "data.net_resources: subnet {sub} of this node is outside ip_range {range}"
            )));
        }
        if sub.prefix_len() > 30 {
            return Err(ProvisionError::Refused(format!(
                "data.net_resources: subnet {sub} is too small (at most /30: a gateway and one container)"
            )));
        }
        Ok(sub.trunc())
    }

    /// Refuse a subnet overlapping any network already on this node.
    async fn check_overlap(&self, r: &Reservation, sub: Ipv4Net) -> Result<(), ProvisionError> {
        for other in self.docker.list_networks().await? {
            let Some(o) = other
                .ipv4_subnets()
                .into_iter()
                .find(|o| o.contains(&sub) || sub.contains(o))
            else {
                continue;
            };
            let is_agent = label(&other.labels, LABEL_TYPE) == WorkloadType::Network.as_str();
            let msg = if !is_agent {
                format!(
                    "subnet {sub} overlaps docker network {} ({o}) on this node",
                    other.name
                )
            } else if label(&other.labels, LABEL_USER) == r.user_id {
                format!(
                    "subnet {sub} overlaps your network {:?} ({o}, reservation {}) on this node",
                    label(&other.labels, LABEL_NETWORK_NAME),
                    label(&other.labels, LABEL_RESERVATION)
                )
            } else {
                format!(
                    "subnet {sub} overlaps network {} ({o}) of another user on this node",
                    other.name
                )
            };
            return Err(ProvisionError::Refused(msg));
        }
        Ok(())
    }

    async fn remove(&self, name: &str, id: &str) -> Result<(), ProvisionError> {
        let filter = ContainerFilter {
            network: Some(name.to_string()),
            ..Default::default()
        };
        if let Some(who) = crate::docker::users_of(self.docker.as_ref(), &filter).await? {
            return Err(ProvisionError::InUse(format!(
                "network of reservation {id} still has container {who} attached; it is removed once that is gone"
            )));
        }
        if self.docker.remove_network(name).await? {
            tracing::info!(network = %name, reservation = %id, "network removed");
        }
        Ok(())
    }
}

fn network_of<'a>(r: &Reservation, w: &'a Workload) -> Result<&'a Network, ProvisionError> {
    match w {
        Workload::Network(n) => Ok(n),
        other => Err(ProvisionError::Refused(format!(
            "reservation {} is a {}, not a network",
            r.id,
            other.kind()
        ))),
    }
}

#[async_trait]
impl Provisioner for NetworkProvisioner {
    async fn provision(
        &self,
        r: &Reservation,
        w: &Workload,
    ) -> Result<serde_json::Value, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let n = network_of(r, w)?;
        let sub = self.subnet(n)?;
        let name = names::network_name(&r.user_id, &n.name);

        if let Some(existing) = self.docker.inspect_network(&name).await? {
            let owner = label(&existing.labels, LABEL_RESERVATION);
            if owner == r.id && label(&existing.labels, LABEL_USER) == r.user_id {
                tracing::info!(reservation = %r.id, network = %name, "network already exists; reusing it");
                return Ok(serde_json::Value::Null);
            }
            return Err(ProvisionError::Refused(format!(
                "network {:?} already exists on this node (reservation {owner})",
                n.name
            )));
        }
        self.check_overlap(r, sub).await?;

        let gateway = sub.hosts().next().ok_or_else(|| {
            ProvisionError::Refused(format!(
                "data.net_resources: subnet {sub} has no host address"
            ))
        })?;
        let mut labels = names::labels(r, WorkloadType::Network);
        labels.insert(LABEL_NETWORK_NAME.into(), n.name.clone());
        let spec = NetworkSpec {
            name: name.clone(),
            subnet: sub,
            gateway,
            labels,
        };
        if let Err(e) = self.docker.create_network(&spec).await {
            // A concurrent run may have made it: reuse that one if ours.
            match self.docker.inspect_network(&name).await? {
                Some(n) if label(&n.labels, LABEL_RESERVATION) == r.id => {}
                _ => return Err(e),
            }
        }
        tracing::info!(reservation = %r.id, network = %name, subnet = %sub, "network provisioned");
        Ok(serde_json::Value::Null)
    }

    async fn decommission(&self, r: &Reservation, w: &Workload) -> Result<(), ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let n = network_of(r, w)?;
        let name = names::network_name(&r.user_id, &n.name);
        match self.docker.inspect_network(&name).await? {
            None => Ok(()),
            // Another reservation's network of the same name (this one was
            // refused as a duplicate): not ours to remove.
            Some(e) if label(&e.labels, LABEL_RESERVATION) != r.id => Ok(()),
            Some(_) => self.remove(&name, &r.id).await,
        }
    }

    async fn exists(&self, r: &Reservation, w: &Workload) -> Result<bool, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let n = network_of(r, w)?;
        let name = names::network_name(&r.user_id, &n.name);
        Ok(self
            .docker
            .inspect_network(&name)
            .await?
            .is_some_and(|e| label(&e.labels, LABEL_RESERVATION) == r.id))
    }

    async fn present(&self) -> Result<Option<std::collections::HashSet<String>>, ProvisionError> {
        // The labels carry the reservation; the name must be the one the
        // user's (user_id, name) maps to, which list_labelled already keeps.
        Ok(Some(self.list_labelled().await?.into_iter().collect()))
    }

    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        let ids: BTreeSet<String> = self
            .docker
            .list_networks()
            .await?
            .into_iter()
            .filter(|n| label(&n.labels, LABEL_TYPE) == WorkloadType::Network.as_str())
            .filter(|n| names::is_ours(&n.labels))
            .map(|n| label(&n.labels, LABEL_RESERVATION).to_string())
            .filter(|id| !id.is_empty())
            .collect();
        Ok(ids.into_iter().collect())
    }

    async fn remove_labelled(&self, id: &str) -> Result<(), ProvisionError> {
        for n in self.docker.list_networks().await? {
            if label(&n.labels, LABEL_TYPE) == WorkloadType::Network.as_str()
                && label(&n.labels, LABEL_RESERVATION) == id
                && names::is_ours(&n.labels)
            {
                self.remove(&n.name, id).await?;
            }
        }
        Ok(())
    }
}
