//! The `volume` workload type, all of it ([`Plugin`]): a Docker volume of
//! `size` GiB whose size is enforced by the filesystem under it, charged
//! its size on its disk type.
//!
//! Mechanism (Docker's `local` driver has no size option for plain
//! directories, so the limit comes from a fixed-size filesystem):
//! - `<root>/volumes/<id>.img`: a sparse file of `size` GiB formatted ext4
//!   (no reserved blocks; usable space is the size less ext4's metadata);
//! - loop-mounted at `<root>/volumes/<id>/`;
//! - the Docker volume `agent-vol-<id>` is the local driver with
//!   `type=none,o=bind,device=<root>/volumes/<id>/data`. `data` exists only
//!   *inside* the ext4 filesystem, so if the loop mount is gone (a reboot)
//!   Docker cannot bind it and a container fails to start instead of
//!   silently writing unlimited data to the host's disk. The mount is
//!   restored on provision, on `exists` (reconciliation at start), by
//!   [`VolumeProvisioner::remount_all`], and before a container using it is
//!   (re)started.
//!
//! A Docker volume found under the reservation's name is reused only when
//! its labels say it was made for this very signed reservation
//! ([`names::adoptable`]); anything else there is removed, with the disk
//! image of that id, and made afresh, so no data crosses between users.
//!
//! Writing past the size fails with ENOSPC ("No space left on device").
//! Needs root, `mkfs.ext4` (e2fsprogs), `mount`/`umount` (util-linux) and
//! loop devices; without them [`VolumeProvisioner::unavailable`] says why,
//! it is logged at error level at construction, and every provision fails
//! with that reason rather than pretending to enforce a size.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use reservation::workloads::{DiskType, Volume};
use reservation::{Reservation, WorkloadType};
use serde_json::json;
use tokio::sync::Mutex;

use crate::charge::{Charge, Resources, MIB_PER_GIB};
use crate::docker::{ContainerFilter, Docker, VolumeSpec};
use crate::names::{self, label, Names, LABEL_DISK, LABEL_SIZE_GIB};
use crate::plugin::{Plugin, Setup};
use crate::{ProvisionError, LABEL_RESERVATION};

/// Serialises mount and unmount on this host so two callers never stack
/// two loop mounts on one directory.
///
/// The one process-wide static of the crate, on purpose: what it guards is
/// the host's mount table (and its loop devices), not state of any value.
/// Several independent owners in one agent mount the same images: the
/// daemon's own `VolumeProvisioner` (remount at start), the registry's,
/// and the container provisioner through [`ensure_device_mounted`] before
/// it starts a container. A lock held by one of them would not serialise
/// the others.
static MOUNT_LOCK: Mutex<()> = Mutex::const_new(());

/// How a volume's bytes are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// ext4 image, loop-mounted: size enforced.
    Loop,
    /// A plain directory, size NOT enforced: only for unit tests with the
    /// fake Docker, where there is no root and no loop device.
    #[cfg_attr(not(any(test, feature = "fake")), allow(dead_code))]
    PlainDir,
}

/// Provisions `volume` workloads.
pub struct VolumeProvisioner {
    docker: Arc<dyn Docker>,
    dir: PathBuf,
    backing: Backing,
    unavailable: Option<String>,
    names: Names,
}

impl VolumeProvisioner {
    /// Volumes live under `<root>/volumes/`. Checks the tools the size
    /// enforcement needs and logs loudly when one is missing.
    pub fn new(docker: Arc<dyn Docker>, root: PathBuf) -> Self {
        let dir = absolute(&root.join("volumes"));
        let unavailable = preflight(&dir);
        if let Some(why) = &unavailable {
            tracing::error!(
                reason = %why,
                "volumes CANNOT be provisioned on this node: their size could not be enforced"
            );
        }
        Self {
            docker,
            dir,
            backing: Backing::Loop,
            unavailable,
            names: Names::unscoped(),
        }
    }

    /// Name, label and filter objects in this node scope (default:
    /// unscoped, [`Names::unscoped`]).
    pub fn with_names(mut self, names: Names) -> Self {
        self.names = names;
        self
    }

    /// A provisioner whose volumes are plain directories with NO size
    /// limit, for unit tests with the fake Docker (no root, no loop
    /// devices). Never use it on a node.
    #[cfg(any(test, feature = "fake"))]
    pub fn unenforced_for_tests(docker: Arc<dyn Docker>, root: PathBuf) -> Self {
        Self {
            docker,
            dir: absolute(&root.join("volumes")),
            backing: Backing::PlainDir,
            unavailable: None,
            names: Names::unscoped(),
        }
    }

    /// Why volumes cannot be provisioned here, if they cannot.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// The directory holding the images and mountpoints.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The disk image of volume `id`.
    pub fn image_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.img"))
    }

    /// Where volume `id`'s filesystem is mounted.
    pub fn mount_path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The directory Docker binds into containers.
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.mount_path(id).join("data")
    }

    /// Mount every volume image that is not mounted (after a reboot).
    /// Returns the ids it mounted. Call at start, before containers run.
    pub async fn remount_all(&self) -> Result<Vec<String>, ProvisionError> {
        let mut done = Vec::new();
        if self.backing != Backing::Loop || self.unavailable.is_some() {
            return Ok(done);
        }
        for id in self.image_ids().await? {
            if ensure_mounted(&self.image_path(&id), &self.mount_path(&id)).await? {
                done.push(id);
            }
        }
        Ok(done)
    }

    /// Ids of the `<id>.img` files under the volume directory.
    async fn image_ids(&self) -> Result<Vec<String>, ProvisionError> {
        let mut ids = Vec::new();
        let mut rd = match tokio::fs::read_dir(&self.dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(node_err(&self.dir, "cannot list", e)),
        };
        while let Some(ent) = rd
            .next_entry()
            .await
            .map_err(|e| node_err(&self.dir, "cannot list", e))?
        {
            let name = ent.file_name().to_string_lossy().to_string();
            if let Some(id) = name.strip_suffix(".img") {
                if names::check_id("id", id).is_ok() {
                    ids.push(id.to_string());
                }
            }
        }
        Ok(ids)
    }

    /// Create (if missing) and mount the volume's filesystem. Returns
    /// whether the image was created now.
    async fn ensure_backing(&self, id: &str, size_gib: u64) -> Result<bool, ProvisionError> {
        match self.backing {
            Backing::PlainDir => {
                let data = self.data_path(id);
                let created = !data.exists();
                tokio::fs::create_dir_all(&data)
                    .await
                    .map_err(|e| node_err(&data, "cannot create", e))?;
                Ok(created)
            }
            Backing::Loop => {
                let img = self.image_path(id);
                let created = !img.exists();
                if created {
                    self.make_image(id, size_gib).await?;
                }
                ensure_mounted(&img, &self.mount_path(id)).await?;
                Ok(created)
            }
        }
    }

    /// A sparse `size_gib` GiB file formatted ext4, made under a temporary
    /// name and renamed, so a crash never leaves a half-made image.
    async fn make_image(&self, id: &str, size_gib: u64) -> Result<(), ProvisionError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| node_err(&self.dir, "cannot create", e))?;
        let tmp = self.dir.join(format!("{id}.img.tmp"));
        let bytes = size_gib.checked_mul(1 << 30).ok_or_else(|| {
            ProvisionError::Refused(format!("size: {size_gib} GiB is out of range"))
        })?;
        // 0600: a volume image holds a tenant's data.
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(|e| node_err(&tmp, "cannot create", e))?;
        f.set_len(bytes)
            .await
            .map_err(|e| node_err(&tmp, &format!("cannot size to {size_gib} GiB"), e))?;
        drop(f);
        let tmp_s = tmp.to_string_lossy().to_string();
        let made = run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                &tmp_s,
            ],
        )
        .await;
        if let Err(e) = made {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ProvisionError::Node(format!("volume {id}: {e}")));
        }
        let img = self.image_path(id);
        tokio::fs::rename(&tmp, &img)
            .await
            .map_err(|e| node_err(&img, "cannot rename into place", e))?;
        tracing::info!(volume = %id, size_gib, image = %img.display(), "volume image created");
        Ok(())
    }

    /// Unmount and delete the volume's filesystem and image.
    async fn drop_backing(&self, id: &str) -> Result<(), ProvisionError> {
        let mp = self.mount_path(id);
        if self.backing == Backing::Loop {
            unmount(id, &mp).await?;
            for p in [self.image_path(id), self.dir.join(format!("{id}.img.tmp"))] {
                match tokio::fs::remove_file(&p).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(node_err(&p, "cannot delete", e)),
                }
            }
        }
        if !is_mounted(&mp) {
            match tokio::fs::remove_dir_all(&mp).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(node_err(&mp, "cannot delete", e)),
            }
        }
        Ok(())
    }

    /// Make volume `vname` of `r` with its disk image; `result` on success.
    async fn create(
        &self,
        r: &Reservation,
        v: &Volume,
        vname: &str,
        result: serde_json::Value,
    ) -> Result<serde_json::Value, ProvisionError> {
        let fresh = self.ensure_backing(&r.id, v.size).await?;
        let mut labels = self.names.labels(r, WorkloadType::Volume);
        labels.insert(LABEL_DISK.into(), v.disk().as_str().into());
        labels.insert(LABEL_SIZE_GIB.into(), v.size.to_string());
        let spec = VolumeSpec {
            name: vname.to_string(),
            driver_opts: [
                ("type", "none"),
                ("o", "bind"),
                ("device", &self.data_path(&r.id).to_string_lossy()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            labels,
        };
        if let Err(e) = self.docker.create_volume(&spec).await {
            // A concurrent run may have made it: fine if it is ours.
            let ours = self
                .docker
                .inspect_volume(vname)
                .await?
                .is_some_and(|x| self.names.adoptable(&x.labels, r));
            if !ours {
                if fresh {
                    if let Err(c) = self.drop_backing(&r.id).await {
                        tracing::warn!(volume = %r.id, error = %c, "cannot clean up after a failed create");
                    }
                }
                return Err(e.into());
            }
        }
        tracing::info!(volume = %r.id, size_gib = v.size, disk = v.disk().as_str(), "volume provisioned");
        Ok(result)
    }

    /// Remove volume `id`: refused with `InUse` while a container mounts it.
    async fn remove_by_id(&self, id: &str) -> Result<(), ProvisionError> {
        names::check_id("volume id", id)?;
        let vname = self.names.volume_name(id);
        let filter = ContainerFilter {
            volume: Some(vname.clone()),
            ..Default::default()
        };
        if let Some(who) = crate::docker::users_of(self.docker.as_ref(), &filter).await? {
            return Err(ProvisionError::InUse(format!(
                "volume {id} is still mounted by container {who}; it is removed once that is gone"
            )));
        }
        let removed = self.docker.remove_volume(&vname).await?;
        self.drop_backing(id).await?;
        if removed {
            tracing::info!(volume = %id, "volume removed with its data");
        }
        Ok(())
    }
}

#[async_trait]
impl Plugin for VolumeProvisioner {
    type Data = Volume;

    fn build(s: &Setup) -> Self {
        VolumeProvisioner::new(s.docker.clone(), s.root.clone()).with_names(s.options.names.clone())
    }

    /// Its size on its disk type.
    fn charge(v: &Volume, _root_disk: DiskType) -> Charge {
        Resources::disk(v.disk(), v.size.saturating_mul(MIB_PER_GIB))
    }

    fn objects(names: &Names, r: &Reservation, _v: &Volume) -> Vec<String> {
        vec![names.volume_name(&r.id)]
    }

    async fn provision(
        &self,
        r: &Reservation,
        v: &Volume,
    ) -> Result<serde_json::Value, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        if let Some(why) = &self.unavailable {
            return Err(ProvisionError::Node(format!(
                "volumes cannot be provisioned on this node: {why}"
            )));
        }
        let result = json!({ "volume_id": r.id });
        let vname = self.names.volume_name(&r.id);

        if let Some(existing) = self.docker.inspect_volume(&vname).await? {
            if self.names.held_by_another(&existing.labels, r) {
                return Err(names::held_error(r, "volume"));
            }
            if !self.names.adoptable(&existing.labels, r) {
                // Not made for this signed reservation (hand-made, another
                // user's, an earlier reservation under the same id): its
                // data must not reach this user. Removed with its disk
                // image, then made afresh.
                tracing::warn!(
                    reservation = %r.id,
                    volume = %vname,
                    "a volume under this reservation's name was not made for it; replacing it"
                );
                self.remove_by_id(&r.id).await?;
                return self.create(r, v, &vname, result).await;
            }
            if self.ensure_backing(&r.id, v.size).await? {
                tracing::warn!(volume = %r.id, "volume's disk image was missing; made a new, empty one");
            }
            tracing::info!(volume = %r.id, "volume already exists; reusing it");
            return Ok(result);
        }
        self.create(r, v, &vname, result).await
    }

    async fn decommission(&self, r: &Reservation, _v: &Volume) -> Result<(), ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        // Never another signed reservation's volume (a refused reservation
        // the explorer gave a running one's id is rolled back through here).
        if let Some(v) = self
            .docker
            .inspect_volume(&self.names.volume_name(&r.id))
            .await?
        {
            if self.names.held_by_another(&v.labels, r) {
                tracing::warn!(reservation = %r.id, "not removing a volume not made for this reservation");
                return Ok(());
            }
        }
        self.remove_by_id(&r.id).await
    }

    /// True when the Docker volume and its disk image exist; remounts the
    /// image if its mount is gone (reboot), logging the repair.
    async fn exists(&self, r: &Reservation, _v: &Volume) -> Result<bool, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let vname = self.names.volume_name(&r.id);
        match self.docker.inspect_volume(&vname).await? {
            Some(v) if label(&v.labels, LABEL_RESERVATION) == r.id => {}
            _ => return Ok(false),
        }
        match self.backing {
            Backing::PlainDir => Ok(self.data_path(&r.id).is_dir()),
            Backing::Loop => {
                let img = self.image_path(&r.id);
                if !img.exists() {
                    tracing::warn!(volume = %r.id, image = %img.display(), "volume's disk image is gone");
                    return Ok(false);
                }
                ensure_mounted(&img, &self.mount_path(&r.id)).await?;
                Ok(true)
            }
        }
    }

    /// Ids of labelled Docker volumes and of disk images on this node (an
    /// image without its Docker volume is an orphan of a cut provision).
    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        let mut ids: BTreeSet<String> = self
            .docker
            .list_volumes(&self.names.type_filter(WorkloadType::Volume))
            .await?
            .into_iter()
            .map(|v| label(&v.labels, LABEL_RESERVATION).to_string())
            .filter(|id| !id.is_empty())
            .collect();
        if self.backing == Backing::Loop {
            ids.extend(self.image_ids().await?);
        }
        Ok(ids.into_iter().collect())
    }

    async fn remove_labelled(&self, id: &str) -> Result<(), ProvisionError> {
        self.remove_by_id(id).await
    }
}

/// Before a container using a volume starts: if `device` (the Docker
/// volume's bind source) is one of ours, `<dir>/<id>/data` with
/// `<dir>/<id>.img` beside it, make sure that image is mounted.
pub(crate) async fn ensure_device_mounted(device: &str) -> Result<(), ProvisionError> {
    let data = Path::new(device);
    if data.file_name().is_none_or(|n| n != "data") {
        return Ok(());
    }
    let Some(mp) = data.parent() else {
        return Ok(());
    };
    let Some(id) = mp.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    if names::check_id("id", id).is_err() {
        return Ok(());
    }
    let img = mp.with_file_name(format!("{id}.img"));
    if !img.is_file() {
        return Ok(());
    }
    ensure_mounted(&img, mp).await.map(|_| ())
}

/// Mount `img` at `mp` unless it is mounted; make sure `data` exists in
/// it. Returns whether it mounted now.
async fn ensure_mounted(img: &Path, mp: &Path) -> Result<bool, ProvisionError> {
    let _guard = MOUNT_LOCK.lock().await;
    tokio::fs::create_dir_all(mp)
        .await
        .map_err(|e| node_err(mp, "cannot create", e))?;
    let mounted_now = if is_mounted(mp) {
        false
    } else {
        let (i, m) = (img.to_string_lossy(), mp.to_string_lossy());
        // nosuid,nodev: a tenant's filesystem must not carry set-uid
        // binaries or device nodes into anyone's reach.
        run("mount", &["-o", "loop,nosuid,nodev", &i, &m])
            .await
            .map_err(|e| ProvisionError::Node(format!("volume image {i}: {e}")))?;
        tracing::info!(image = %i, at = %m, "volume image mounted");
        true
    };
    // Only ever inside the mounted filesystem: checked just above.
    let data = mp.join("data");
    tokio::fs::create_dir_all(&data)
        .await
        .map_err(|e| node_err(&data, "cannot create", e))?;
    Ok(mounted_now)
}

/// Unmount `mp` if mounted; a busy filesystem is `InUse`.
async fn unmount(id: &str, mp: &Path) -> Result<(), ProvisionError> {
    let _guard = MOUNT_LOCK.lock().await;
    if !is_mounted(mp) {
        return Ok(());
    }
    let m = mp.to_string_lossy();
    match run("umount", &[&m]).await {
        Ok(()) => Ok(()),
        Err(e) if e.contains("busy") => Err(ProvisionError::InUse(format!(
            "volume {id}: its filesystem at {m} is still in use: {e}"
        ))),
        Err(e) => Err(ProvisionError::Node(format!("volume {id}: {e}"))),
    }
}

/// Whether a filesystem is mounted at `p`: it sits on another device than
/// its parent directory.
fn is_mounted(p: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (std::fs::metadata(p), p.parent().map(std::fs::metadata))
    else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Whether this process has a mount namespace of its own (systemd's
/// ProtectSystem/PrivateTmp give a service one): mounts made there would be
/// invisible to dockerd, so (u)mount must run in the host's namespace.
fn private_mount_namespace() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(me), Ok(init)) => me != init,
        _ => false,
    }
}

/// Run a system tool; an error carries its stderr. `mount` and `umount`
/// run in the host's mount namespace (through `nsenter`) when the agent
/// has a private one, so Docker sees the volume filesystems.
async fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let tool = find_tool(prog).unwrap_or_else(|| prog.into());
    let mut cmd = if matches!(prog, "mount" | "umount") && private_mount_namespace() {
        let mut c =
            tokio::process::Command::new(find_tool("nsenter").unwrap_or_else(|| "nsenter".into()));
        c.arg("--mount=/proc/1/ns/mnt").arg("--").arg(&tool);
        c
    } else {
        tokio::process::Command::new(&tool)
    };
    let out = cmd
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `prog` on PATH or in the sbin directories (a service's PATH may lack
/// them).
fn find_tool(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Why size-enforced volumes cannot work here, or `None` when they can.
fn preflight(dir: &Path) -> Option<String> {
    for tool in ["mkfs.ext4", "mount", "umount"] {
        if find_tool(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (install e2fsprogs and util-linux)"
            ));
        }
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
    {
        return Some(format!(
            "cannot open /dev/loop-control ({e}): loop devices are needed, as root"
        ));
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Some(format!("cannot create {}: {e}", dir.display()));
    }
    None
}

fn absolute(p: &Path) -> PathBuf {
    let _ = std::fs::create_dir_all(p);
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

fn node_err(p: &Path, what: &str, e: std::io::Error) -> ProvisionError {
    ProvisionError::Node(format!("{}: {what}: {e}", p.display()))
}
