//! The `zdb` workload type, all of it ([`Plugin`]): one 0-db namespace per
//! reservation, in a 0-db container shared by every namespace of the same
//! (disk type, mode), charged its size on its disk type.
//!
//! - Container `agent-zdb-<hdd|ssd>-<user|seq>`, started on demand from the
//!   configured image (default [`DEFAULT_ZDB_IMAGE`], the agent's
//!   `--zdb-image`) as `/bin/sh -c 'exec /bin/zdb --listen 0.0.0.0 --port
//!   9900 --data /zdb/data --index /zdb/index --mode <mode> --protect
//!   --maxsize 1048576 --admin "$ADMIN"'`, with the admin password only in
//!   the container's environment (`ADMIN`, as the image's own
//!   `zdb-process` entrypoint reads it): never in `docker inspect`'s
//!   Cmd/Args/Entrypoint. 0-db takes it on no other channel than its
//!   argv, so the 0-db process itself (not the container's config) carries
//!   it. Its data on the agent-owned Docker volume of the same name,
//!   restart `unless-stopped`, on the Docker network given at construction
//!   (default `bridge`).
//! - `--protect`: 0-db's `default` namespace is read-only for everyone and
//!   writable only after `SELECT default <admin password>`, and
//!   `--maxsize` caps it at [`DEFAULT_NAMESPACE_MAXSIZE`]: a tenant who
//!   reaches port 9900 cannot store data outside a reserved namespace.
//! - The admin password guards `NSNEW`/`NSSET`/`NSDEL` against anyone who
//!   reaches port 9900. It is derived from the node key (an ed25519
//!   signature of the container name), so it survives agent restarts
//!   without being stored anywhere.
//! - Per reservation, namespace `<reservation id>-<16 hex of the signature
//!   hash>` ([`namespace_name`]): the name says which signed reservation
//!   (so which user) owns it, so a reservation never takes over, nor
//!   re-passwords, a namespace of another one under the same id. `NSNEW`
//!   (skipped when it exists), then `NSSET password <plaintext opened from
//!   the sealed password>`, `NSSET public 0|1`, `NSSET maxsize <size GiB
//!   in bytes>`, re-applied on every provision. All of it over the Redis
//!   protocol through the `redis` crate.
//! - A failed provisioning rolls back what it made: the namespace it
//!   created, and the 0-db container and volume if it created them.
//! - Result `data`: `{"namespace", "ip", "port"}`: the container's address
//!   on its network, reachable from the node and what is routed to that
//!   network.
//! - Decommission: `NSDEL`; the container and its volume are removed when
//!   only 0-db's `default` namespace is left.
//!
//! The password is never logged or returned: it is a [`reservation::Secret`]
//! until the one `NSSET` that carries it.
//!
//! Files: `mod.rs`, the plug-in ([`ZdbProvisioner`] and its [`Plugin`]
//! impl: instances as Docker containers, namespaces in them); `admin.rs`,
//! the Redis-protocol admin of an instance; `tests.rs`, unit tests.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reservation::workloads::{DiskType, Zdb};
use reservation::{Identity, Reservation, Secret, WorkloadType};
use serde_json::json;
use tokio::sync::Mutex;

use crate::charge::{Charge, Resources, MIB_PER_GIB};
use crate::docker::{
    Confinement, ContainerFilter, ContainerInfo, ContainerNet, ContainerSpec, Docker, DockerError,
    Labels, VolumeMount, VolumeSpec,
};
use crate::names::{self, label, Names, LABEL_DISK};
use crate::plugin::{Plugin, Setup};
use crate::{ProvisionError, LABEL_TYPE};

mod admin;
use admin::zerr;

/// The official 0-db image (production); tests use a local stand-in.
pub const DEFAULT_ZDB_IMAGE: &str = "threefoldtech/0-db";
/// The port 0-db listens on inside its container.
pub const ZDB_PORT: u16 = 9900;
/// Label with the 0-db mode (`user` or `seq`) of a 0-db container.
pub const LABEL_ZDB_MODE: &str = "io.agent.zdb.mode";
/// Label set on 0-db containers started with `--protect` and the admin
/// password in their environment (older ones are recreated).
pub const LABEL_ZDB_PROTECTED: &str = "io.agent.zdb.protected";
/// Size limit of 0-db's `default` namespace (`--maxsize`), in bytes.
pub const DEFAULT_NAMESPACE_MAXSIZE: u64 = 1 << 20;
/// 0-db's own namespace, present in every instance.
const DEFAULT_NAMESPACE: &str = "default";

/// What one provisioning made of a 0-db instance, so a rollback removes
/// exactly that.
#[derive(Debug, Clone, Copy)]
struct Made {
    container: bool,
    volume: bool,
}

/// PIDs limit of a 0-db server container (0-db is single-threaded).
const ZDB_PIDS_LIMIT: i64 = 256;

/// The namespace of reservation `r`: `<id>-<first 16 hex characters of
/// its signature hash>`.
pub fn namespace_name(r: &Reservation) -> String {
    let h = names::signature_hash(r);
    format!("{}-{}", r.id, &h[..16.min(h.len())])
}

/// The reservation id in a namespace name made by [`namespace_name`].
pub fn reservation_of_namespace(ns: &str) -> Option<&str> {
    let (id, h) = ns.rsplit_once('-')?;
    (h.len() == 16
        && h.bytes().all(|c| c.is_ascii_hexdigit())
        && names::check_id("namespace", id).is_ok())
    .then_some(id)
}
/// The prefix of the 0-db containers' and volumes' names in node scope
/// `names`: `agent-zdb-`, or `agent-<node>-zdb-`.
pub fn name_prefix(names: &Names) -> String {
    format!("{}zdb-", names.prefix())
}

/// `<prefix><hdd|ssd>-<mode>`: the 0-db instance of `disk` and `mode`.
fn instance_name(prefix: &str, disk: DiskType, mode: &str) -> String {
    format!("{prefix}{}-{mode}", disk.as_str().to_ascii_lowercase())
}

/// Where the volume is mounted in the 0-db container.
const DATA_DIR: &str = "/zdb";

/// Provisions `zdb` workloads.
pub struct ZdbProvisioner {
    docker: Arc<dyn Docker>,
    node: Arc<Identity>,
    image: String,
    network: String,
    prefix: String,
    ready_timeout: Duration,
    /// Serialises container creation and removal: two namespaces arriving
    /// together must not both create the container, and the last NSDEL's
    /// removal must not race a new NSNEW.
    lock: Mutex<()>,
    names: Names,
}

/// One 0-db instance: a (disk type, mode) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Instance {
    disk: DiskType,
    mode: String,
    /// Container and volume name.
    name: String,
}

/// Container `name` was there a moment ago and is gone.
fn vanished(name: &str) -> ProvisionError {
    ProvisionError::Docker(DockerError::Other(format!("container {name} vanished")))
}

impl ZdbProvisioner {
    /// 0-db containers from `image` on the default `bridge` network.
    pub fn new(docker: Arc<dyn Docker>, node: Arc<Identity>, image: impl Into<String>) -> Self {
        Self {
            docker,
            node,
            image: image.into(),
            network: "bridge".into(),
            prefix: name_prefix(&Names::unscoped()),
            ready_timeout: Duration::from_secs(30),
            lock: Mutex::new(()),
            names: Names::unscoped(),
        }
    }

    /// Name, label and filter the 0-db containers in this node scope
    /// (default: unscoped, [`Names::unscoped`]): their names take the
    /// scope's prefix ([`name_prefix`]), as `agentctl list` names them.
    pub fn with_names(mut self, names: Names) -> Self {
        self.prefix = name_prefix(&names);
        self.names = names;
        self
    }

    /// How long a 0-db container gets to answer PING (default 30 s).
    pub fn with_ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Run the 0-db containers on Docker network `network` instead.
    pub fn with_network(mut self, network: impl Into<String>) -> Self {
        self.network = network.into();
        self
    }

    /// Name the containers and volumes `<prefix><hdd|ssd>-<mode>` instead
    /// of the scope's prefix (tests use their own so they never share an
    /// instance).
    pub fn with_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The container (and volume) name for `disk` and `mode`.
    pub fn instance_name(&self, disk: DiskType, mode: &str) -> String {
        instance_name(&self.prefix, disk, mode)
    }

    fn instance(&self, z: &Zdb) -> Instance {
        let disk = z.disk();
        Instance {
            disk,
            mode: z.mode.clone(),
            name: self.instance_name(disk, &z.mode),
        }
    }

    /// The admin password of instance `name`: deterministic per node key.
    fn admin_password(&self, name: &str) -> Secret {
        let sig = self
            .node
            .sign(format!("0-db admin password of {name}").as_bytes());
        Secret::new(
            sig.chars()
                .filter(char::is_ascii_alphanumeric)
                .take(40)
                .collect::<String>(),
        )
    }

    fn labels(&self, inst: &Instance) -> Labels {
        let mut l = Labels::from([
            (
                LABEL_TYPE.to_string(),
                WorkloadType::Zdb.as_str().to_string(),
            ),
            (LABEL_DISK.to_string(), inst.disk.as_str().to_string()),
            (LABEL_ZDB_MODE.to_string(), inst.mode.clone()),
            (LABEL_ZDB_PROTECTED.to_string(), "1".to_string()),
        ]);
        l.extend(self.names.node_labels());
        l
    }

    fn ip_of(&self, c: &ContainerInfo) -> Result<Ipv4Addr, ProvisionError> {
        c.networks
            .get(&self.network)
            .and_then(|e| e.ipv4.parse().ok())
            .ok_or_else(|| {
                ProvisionError::Node(format!(
                    "0-db container {} has no IPv4 address on network {}",
                    c.name, self.network
                ))
            })
    }

    /// The running instance, created and started when missing or down;
    /// also whether this call created its container.
    async fn ensure_instance(&self, inst: &Instance) -> Result<(Ipv4Addr, bool), ProvisionError> {
        let existing = match self.docker.inspect_container(&inst.name).await? {
            Some(c)
                if label(&c.labels, LABEL_TYPE) != WorkloadType::Zdb.as_str()
                    || !self.names.is_ours(&c.labels) =>
            {
                return Err(ProvisionError::Node(format!(
                    "container {} exists but is not a 0-db container of this node; remove it",
                    inst.name
                )));
            }
            Some(c) if label(&c.labels, LABEL_ZDB_PROTECTED) != "1" => {
                // Made by an earlier release: admin password on its
                // command line, default namespace open. Its namespaces are
                // on the volume, which stays.
                tracing::warn!(container = %inst.name, "0-db container predates --protect and the admin password in the environment; recreating it");
                self.docker
                    .stop_container(&inst.name, Duration::from_secs(10))
                    .await?;
                self.docker.remove_container(&inst.name).await?;
                None
            }
            other => other,
        };
        let (c, created) = match existing {
            Some(c) => (c, false),
            None => (self.create_instance(inst).await?, true),
        };
        let c = if c.is_up() {
            c
        } else {
            tracing::info!(container = %inst.name, state = %c.state, "starting 0-db container");
            self.docker.start_container(&inst.name).await?;
            self.docker
                .inspect_container(&inst.name)
                .await?
                .ok_or_else(|| vanished(&inst.name))?
        };
        let ip = self.ip_of(&c)?;
        self.wait_ready(inst, ip).await?;
        Ok((ip, created))
    }

    /// [`Self::ensure_instance`], removing the container (and volume) it
    /// created if it then fails to come up.
    /// Returns the instance's address and what this call made: its volume
    /// holds every tenant's namespaces, so a rollback removes the volume
    /// only when this very call created it.
    async fn ensure_instance_or_roll_back(
        &self,
        inst: &Instance,
    ) -> Result<(Ipv4Addr, Made), ProvisionError> {
        let existed = self.docker.inspect_container(&inst.name).await?.is_some();
        let volume_existed = self.docker.inspect_volume(&inst.name).await?.is_some();
        match self.ensure_instance(inst).await {
            Ok((ip, created)) => Ok((
                ip,
                Made {
                    container: created,
                    volume: created && !volume_existed,
                },
            )),
            Err(e) => {
                if !existed {
                    self.remove_instance(inst, !volume_existed).await;
                }
                Err(e)
            }
        }
    }

    /// Remove the instance's container, and its volume when `volume` (only
    /// ever one this provisioning created), logging a failure.
    async fn remove_instance(&self, inst: &Instance, volume: bool) {
        let r = async {
            self.docker
                .stop_container(&inst.name, Duration::from_secs(1))
                .await?;
            self.docker.remove_container(&inst.name).await?;
            if volume {
                self.docker.remove_volume(&inst.name).await?;
            }
            Ok::<(), ProvisionError>(())
        }
        .await;
        match r {
            Ok(()) => {
                tracing::info!(container = %inst.name, "0-db container this provisioning created removed")
            }
            Err(e) => {
                tracing::warn!(container = %inst.name, error = %e, "cannot remove the 0-db container this provisioning created")
            }
        }
    }

    async fn create_instance(&self, inst: &Instance) -> Result<ContainerInfo, ProvisionError> {
        if !self.docker.image_exists(&self.image).await? {
            tracing::info!(image = %self.image, "0-db image not on this node; pulling it");
            self.docker.pull_image(&self.image).await.map_err(|e| {
                ProvisionError::Node(format!(
                    "0-db image {} is not on this node and cannot be pulled: {e}",
                    self.image
                ))
            })?;
        }
        let labels = self.labels(inst);
        if self.docker.inspect_volume(&inst.name).await?.is_none() {
            self.docker
                .create_volume(&VolumeSpec {
                    name: inst.name.clone(),
                    driver_opts: Default::default(),
                    labels: labels.clone(),
                })
                .await?;
        }
        let admin = self.admin_password(&inst.name);
        let spec = ContainerSpec {
            name: inst.name.clone(),
            image: self.image.clone(),
            env: Vec::new(),
            secret_env: vec![("ADMIN".into(), admin)],
            entrypoint: Some(zdb_entrypoint(&inst.mode)?),
            tty: false,
            open_stdin: false,
            nano_cpus: 0,
            memory: 0,
            mounts: vec![VolumeMount {
                volume: inst.name.clone(),
                target: DATA_DIR.into(),
            }],
            network: ContainerNet::Bridge {
                network: self.network.clone(),
                ipv4: None,
            },
            ports: Vec::new(),
            restart_unless_stopped: true,
            labels,
        };
        // The 0-db server is shared by tenants: confined like their own
        // containers (it needs no raw sockets and no privilege changes).
        let confine = Confinement {
            pids_limit: Some(ZDB_PIDS_LIMIT),
            no_new_privileges: true,
            cap_drop: vec!["NET_RAW".into()],
            ..Confinement::default()
        };
        self.docker
            .create_confined_container(&spec, &confine)
            .await?;
        tracing::info!(container = %inst.name, image = %self.image, "0-db container created");
        self.docker
            .inspect_container(&inst.name)
            .await?
            .ok_or_else(|| vanished(&inst.name))
    }

    /// Every 0-db container of this provisioner, running or not.
    async fn instances(&self) -> Result<Vec<(Instance, ContainerInfo)>, ProvisionError> {
        let filter = ContainerFilter {
            labels: self.names.type_filter(WorkloadType::Zdb),
            ..Default::default()
        };
        let mut out = Vec::new();
        for c in self.docker.list_containers(&filter).await? {
            if !c.name.starts_with(&self.prefix) {
                continue;
            }
            let disk = match label(&c.labels, LABEL_DISK) {
                "HDD" => DiskType::Hdd,
                "SSD" => DiskType::Ssd,
                _ => continue,
            };
            let mode = label(&c.labels, LABEL_ZDB_MODE).to_string();
            let name = self.instance_name(disk, &mode);
            if name != c.name {
                continue;
            }
            out.push((Instance { disk, mode, name }, c));
        }
        Ok(out)
    }
}

/// The 0-db container's entrypoint: a shell that hands `$ADMIN` from the
/// environment to `/bin/zdb` (so `docker inspect` never shows it), with
/// `--protect` and the default namespace's `--maxsize`. `mode` must be
/// `user` or `seq` (it is written into the shell line).
pub fn zdb_entrypoint(mode: &str) -> Result<Vec<String>, ProvisionError> {
    if mode != "user" && mode != "seq" {
        return Err(ProvisionError::Refused(format!(
            "data.mode: zdb mode {mode:?} is not one of user, seq"
        )));
    }
    let line = format!(
        "exec /bin/zdb --listen 0.0.0.0 --port {ZDB_PORT} --data {DATA_DIR}/data --index {DATA_DIR}/index --mode {mode} --protect --maxsize {DEFAULT_NAMESPACE_MAXSIZE} --admin \"$ADMIN\""
    );
    Ok(vec!["/bin/sh".into(), "-c".into(), line])
}

#[async_trait]
impl Plugin for ZdbProvisioner {
    type Data = Zdb;

    fn build(s: &Setup) -> Self {
        let names = &s.options.names;
        ZdbProvisioner::new(
            s.docker.clone(),
            s.node.clone(),
            s.options.zdb_image.clone(),
        )
        .with_names(names.clone())
    }

    /// Its size on its disk type.
    fn charge(z: &Zdb, _root_disk: DiskType) -> Charge {
        Resources::disk(z.disk(), z.size.saturating_mul(MIB_PER_GIB))
    }

    /// Its namespace, and the 0-db container it shares with others (not
    /// watched: it is not given up on for one of them).
    fn objects(names: &Names, r: &Reservation, z: &Zdb) -> Vec<String> {
        vec![
            namespace_name(r),
            instance_name(&name_prefix(names), z.disk(), &z.mode),
        ]
    }

    async fn provision(
        &self,
        r: &Reservation,
        z: &Zdb,
    ) -> Result<serde_json::Value, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        if z.mode != "user" && z.mode != "seq" {
            return Err(ProvisionError::Refused(format!(
                "data.mode: zdb mode {:?} is not one of user, seq",
                z.mode
            )));
        }
        let password = self
            .node
            .open_sealed("password", &z.password)
            .map_err(|e| ProvisionError::Refused(e.to_string()))?;
        // 0-db takes NSSET values of at most 63 bytes, and `*` means
        // "clear the password"; an empty password means none.
        let password_arg = match password.expose() {
            "" => "*",
            "*" => {
                return Err(ProvisionError::Refused(
                    "data.password: \"*\" cannot be a 0-db password (it clears the password)"
                        .into(),
                ))
            }
            p if p.len() > 63 => {
                return Err(ProvisionError::Refused(format!(
                    "data.password: 0-db passwords are at most 63 bytes, this one has {}",
                    p.len()
                )))
            }
            p => p,
        };
        let maxsize = z.size.checked_mul(1 << 30).ok_or_else(|| {
            ProvisionError::Refused(format!("data.size: {} GiB is out of range", z.size))
        })?;
        let inst = self.instance(z);
        let ns = namespace_name(r);
        let ns = ns.as_str();

        let _guard = self.lock.lock().await;
        let (ip, made) = self.ensure_instance_or_roll_back(&inst).await?;
        let mut made_namespace = false;
        let steps = async {
            let mut con = self.admin(&inst, ip).await?;
            if Self::namespace_exists(&mut con, ns).await? {
                tracing::info!(reservation = %r.id, namespace = %ns, container = %inst.name, "0-db namespace exists; re-applying its settings");
            } else {
                redis::cmd("NSNEW")
                    .arg(ns)
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(|e| zerr(&format!("NSNEW {ns}"), e))?;
                made_namespace = true;
            }
            redis::cmd("NSSET")
                .arg(ns)
                .arg("password")
                .arg(password_arg)
                .query_async::<()>(&mut con)
                .await
                .map_err(|e| zerr(&format!("NSSET {ns} password"), e))?;
            redis::cmd("NSSET")
                .arg(ns)
                .arg("public")
                .arg(if z.public { "1" } else { "0" })
                .query_async::<()>(&mut con)
                .await
                .map_err(|e| zerr(&format!("NSSET {ns} public"), e))?;
            redis::cmd("NSSET")
                .arg(ns)
                .arg("maxsize")
                .arg(maxsize)
                .query_async::<()>(&mut con)
                .await
                .map_err(|e| zerr(&format!("NSSET {ns} maxsize"), e))?;
            Ok::<(), ProvisionError>(())
        }
        .await;
        if let Err(e) = steps {
            // Leave nothing this provisioning made, and nothing else: the
            // namespace while its container still runs, then the container
            // (and the volume only if it is new: others' namespaces live
            // on an existing one).
            if made_namespace && !made.volume {
                if let Err(e) = self.delete_namespace(&inst, ns).await {
                    tracing::warn!(reservation = %r.id, namespace = %ns, error = %e, "cannot remove the 0-db namespace of a failed provisioning");
                }
            }
            if made.container {
                self.remove_instance(&inst, made.volume).await;
            }
            return Err(e);
        }
        tracing::info!(reservation = %r.id, namespace = %ns, container = %inst.name, ip = %ip, size_gib = z.size, public = z.public, "0-db namespace provisioned");
        Ok(json!({"namespace": ns, "ip": ip.to_string(), "port": ZDB_PORT}))
    }

    async fn decommission(&self, r: &Reservation, z: &Zdb) -> Result<(), ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let inst = self.instance(z);
        let _guard = self.lock.lock().await;
        self.delete_namespace(&inst, &namespace_name(r)).await
    }

    async fn exists(&self, r: &Reservation, z: &Zdb) -> Result<bool, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let inst = self.instance(z);
        let _guard = self.lock.lock().await;
        let Some(c) = self.docker.inspect_container(&inst.name).await? else {
            return Ok(false);
        };
        if !c.is_up() {
            return Ok(false);
        }
        let ip = self.ip_of(&c)?;
        self.wait_ready(&inst, ip).await?;
        let mut con = self.admin(&inst, ip).await?;
        Self::namespace_exists(&mut con, &namespace_name(r)).await
    }

    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        let _guard = self.lock.lock().await;
        let mut ids = Vec::new();
        for (inst, c) in self.instances().await? {
            if !c.is_up() {
                continue;
            }
            let ip = self.ip_of(&c)?;
            let mut con = self.admin(&inst, ip).await?;
            let list: Vec<String> = redis::cmd("NSLIST")
                .query_async(&mut con)
                .await
                .map_err(|e| zerr("NSLIST", e))?;
            ids.extend(
                list.iter()
                    .filter_map(|n| reservation_of_namespace(n))
                    .map(String::from),
            );
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn remove_labelled(&self, id: &str) -> Result<(), ProvisionError> {
        names::check_id("reservation id", id)?;
        let _guard = self.lock.lock().await;
        for (inst, _) in self.instances().await? {
            let (ip, _) = self.ensure_instance(&inst).await?;
            let mut con = self.admin(&inst, ip).await?;
            let list: Vec<String> = redis::cmd("NSLIST")
                .query_async(&mut con)
                .await
                .map_err(|e| zerr("NSLIST", e))?;
            drop(con);
            for ns in list
                .iter()
                .filter(|n| reservation_of_namespace(n) == Some(id))
            {
                self.delete_namespace(&inst, ns).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
