//! [`BollardDocker`]: the [`Docker`] seam over bollard and the local
//! engine. Every engine failure becomes a [`DockerError`] that keeps the
//! bollard error as its source; the models are converted in
//! `bollard_convert.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::bollard_convert::{
    container_info, container_runs, container_summary, create_config, label_filters, network_info,
    volume_info,
};
use super::error::status_of;
use super::{
    split_image_tag, Confinement, ContainerExtras, ContainerFilter, ContainerInfo, ContainerRuns,
    ContainerSpec, Docker, DockerError, DockerInfo, FileUpload, LogStream, NetworkInfo,
    NetworkSpec, VolumeInfo, VolumeSpec,
};
use crate::images::ImagePolicy;

/// [`Docker`] over bollard and the local engine.
#[derive(Clone)]
pub struct BollardDocker {
    client: ::bollard::Docker,
    /// Pull deadline, shared pulls and the record of pulled images.
    images: Arc<ImagePolicy>,
}

impl BollardDocker {
    /// Connect to the local engine (`DOCKER_HOST` or the unix socket) and
    /// negotiate the API version down to what the engine speaks (bollard
    /// 0.18 defaults to 1.47; the engine here is 1.41).
    pub async fn connect() -> Result<Self, DockerError> {
        let client = ::bollard::Docker::connect_with_local_defaults()
            .map_err(|e| DockerError::Connect {
                what: "cannot reach the docker engine",
                source: Arc::new(e),
            })?
            // Pulls of large images and stops with a grace period take long.
            .with_timeout(Duration::from_secs(600));
        let client = client
            .negotiate_version()
            .await
            .map_err(|e| DockerError::Connect {
                what: "cannot negotiate the docker API version",
                source: Arc::new(e),
            })?;
        Ok(Self::from_client(client))
    }

    /// Wrap an already configured client.
    pub fn from_client(client: ::bollard::Docker) -> Self {
        Self {
            client,
            images: Arc::default(),
        }
    }

    /// Pull with this policy (deadline, record file for garbage collection).
    pub fn with_image_policy(mut self, policy: ImagePolicy) -> Self {
        self.images = Arc::new(policy);
        self
    }

    /// The image policy, for garbage collection
    /// ([`crate::images::collect`]).
    pub fn image_policy(&self) -> &ImagePolicy {
        &self.images
    }

    /// The bollard client (for callers outside the seam, like tests).
    pub fn client(&self) -> &::bollard::Docker {
        &self.client
    }

    async fn pull_now(&self, image: &str) -> Result<(), DockerError> {
        use ::bollard::image::CreateImageOptions;
        let (repo, tag) = split_image_tag(image);
        let opts = CreateImageOptions {
            from_image: repo,
            tag,
            ..Default::default()
        };
        tracing::info!(image, "pulling image");
        let mut stream = self.client.create_image(Some(opts), None, None);
        // Log each layer's status when it changes, not every progress tick.
        let mut last: HashMap<String, String> = HashMap::new();
        while let Some(item) = stream.next().await {
            let info =
                item.map_err(|e| DockerError::engine(format_args!("pull image {image}"), e))?;
            let layer = info.id.clone().unwrap_or_default();
            let status = info.status.clone().unwrap_or_default();
            if last.get(&layer) != Some(&status) {
                tracing::info!(image, layer = %layer, status = %status, "pull progress");
                last.insert(layer, status);
            } else if let Some(p) = &info.progress {
                tracing::debug!(image, layer = %layer, progress = %p, "pull progress");
            }
        }
        tracing::info!(image, "image pulled");
        Ok(())
    }

    /// The one create call: `spec`, plus `extras` (k3s) and `confine`
    /// (tenant containers).
    async fn create_full(
        &self,
        spec: &ContainerSpec,
        extras: &ContainerExtras,
        confine: &Confinement,
    ) -> Result<String, DockerError> {
        use ::bollard::container::CreateContainerOptions;
        let opts = CreateContainerOptions {
            name: spec.name.clone(),
            platform: None,
        };
        let r = self
            .client
            .create_container(Some(opts), create_config(spec, extras, confine))
            .await
            .map_err(|e| DockerError::engine(format_args!("create container {}", spec.name), e))?;
        Ok(r.id)
    }

    async fn inspect_raw(
        &self,
        name: &str,
    ) -> Result<Option<::bollard::models::ContainerInspectResponse>, DockerError> {
        match self.client.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(DockerError::engine(
                format_args!("inspect container {name}"),
                e,
            )),
        }
    }
}

#[async_trait]
impl Docker for BollardDocker {
    async fn info(&self) -> Result<DockerInfo, DockerError> {
        self.client
            .ping()
            .await
            .map_err(|e| DockerError::engine("ping", e))?;
        let v = self
            .client
            .version()
            .await
            .map_err(|e| DockerError::engine("version", e))?;
        let i = self
            .client
            .info()
            .await
            .map_err(|e| DockerError::engine("info", e))?;
        let runtime_paths: std::collections::BTreeMap<String, String> = i
            .runtimes
            .unwrap_or_default()
            .into_iter()
            .map(|(name, r)| (name, r.path.unwrap_or_default()))
            .collect();
        Ok(DockerInfo {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            ncpu: i.ncpu.unwrap_or(0).max(0) as u32,
            mem_total: i.mem_total.unwrap_or(0).max(0) as u64,
            runtimes: runtime_paths.keys().cloned().collect(),
            runtime_paths,
        })
    }

    async fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        match self.client.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(DockerError::engine(
                format_args!("inspect image {image}"),
                e,
            )),
        }
    }

    async fn pull_image(&self, image: &str) -> Result<(), DockerError> {
        let policy = self.images.clone();
        policy.pull(image, || self.pull_now(image)).await
    }

    async fn images_in_use(&self) -> Result<HashSet<String>, DockerError> {
        use ::bollard::container::ListContainersOptions;
        let list = self
            .client
            .list_containers(Some(ListContainersOptions::<String> {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| DockerError::engine("list containers", e))?;
        let mut used = HashSet::new();
        for c in list {
            used.extend(c.image);
            used.extend(c.image_id);
        }
        Ok(used)
    }

    async fn remove_image(&self, image: &str) -> Result<(), DockerError> {
        match self.client.remove_image(image, None, None).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(DockerError::engine(format_args!("remove image {image}"), e)),
        }
    }

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInfo>, DockerError> {
        Ok(self.inspect_raw(name).await?.map(container_info))
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        // One body for all: plain containers are containers with no extras.
        self.create_full(spec, &ContainerExtras::default(), &Confinement::default())
            .await
    }

    async fn create_confined_container(
        &self,
        spec: &ContainerSpec,
        confine: &Confinement,
    ) -> Result<String, DockerError> {
        self.create_full(spec, &ContainerExtras::default(), confine)
            .await
    }

    async fn create_container_with(
        &self,
        spec: &ContainerSpec,
        extras: &ContainerExtras,
    ) -> Result<String, DockerError> {
        self.create_full(spec, extras, &Confinement::default())
            .await
    }

    async fn upload_files(&self, name: &str, files: &[FileUpload]) -> Result<(), DockerError> {
        use ::bollard::container::UploadToContainerOptions;
        let archive = super::tar_of(files)?;
        let opts = UploadToContainerOptions {
            path: "/".to_string(),
            no_overwrite_dir_non_dir: "true".to_string(),
        };
        self.client
            .upload_to_container(name, Some(opts), archive.into())
            .await
            .map_err(|e| DockerError::engine(format_args!("upload files into container {name}"), e))
    }

    async fn start_container(&self, name: &str) -> Result<(), DockerError> {
        match self.client.start_container::<String>(name, None).await {
            // 304: already started.
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(DockerError::engine(
                format_args!("start container {name}"),
                e,
            )),
        }
    }

    async fn stop_container(&self, name: &str, grace: Duration) -> Result<(), DockerError> {
        use ::bollard::container::StopContainerOptions;
        let opts = StopContainerOptions {
            t: grace.as_secs() as i64,
        };
        match self.client.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(304) | Some(404)) => Ok(()),
            Err(e) => Err(DockerError::engine(
                format_args!("stop container {name}"),
                e,
            )),
        }
    }

    async fn remove_container(&self, name: &str) -> Result<bool, DockerError> {
        use ::bollard::container::RemoveContainerOptions;
        let opts = RemoveContainerOptions {
            v: true,
            force: true,
            link: false,
        };
        match self.client.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) if status_of(&e) == Some(409) => Err(DockerError::in_use(
                format_args!("container {name} cannot be removed yet"),
                e,
            )),
            Err(e) => Err(DockerError::engine(
                format_args!("remove container {name}"),
                e,
            )),
        }
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        use ::bollard::container::ListContainersOptions;
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        if !filter.labels.is_empty() {
            filters.insert("label".into(), label_filters(&filter.labels));
        }
        if let Some(v) = &filter.volume {
            filters.insert("volume".into(), vec![v.clone()]);
        }
        if let Some(n) = &filter.network {
            filters.insert("network".into(), vec![n.clone()]);
        }
        let opts = ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        };
        let list = self
            .client
            .list_containers(Some(opts))
            .await
            .map_err(|e| DockerError::engine("list containers", e))?;
        Ok(list.into_iter().map(container_summary).collect())
    }

    async fn container_runs(&self, name: &str) -> Result<Option<ContainerRuns>, DockerError> {
        Ok(self.inspect_raw(name).await?.map(container_runs))
    }

    async fn container_logs(&self, name: &str, tail: usize) -> Result<String, DockerError> {
        use ::bollard::container::LogsOptions;
        let opts = LogsOptions::<String> {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut out = String::new();
        let mut s = self.client.logs(name, Some(opts));
        while let Some(chunk) = s.next().await {
            let chunk = chunk
                .map_err(|e| DockerError::engine(format_args!("logs of container {name}"), e))?;
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(out)
    }

    async fn stream_logs(
        &self,
        name: &str,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, DockerError> {
        use ::bollard::container::LogsOptions;
        if self.inspect_container(name).await?.is_none() {
            return Err(DockerError::NoSuchContainer(name.to_string()));
        }
        let opts = LogsOptions::<String> {
            stdout: true,
            stderr: true,
            follow,
            tail: tail.to_string(),
            ..Default::default()
        };
        let name = name.to_string();
        let s = self
            .client
            .logs(&name.clone(), Some(opts))
            .map(move |chunk| {
                chunk
                    .map(|c| String::from_utf8_lossy(&c.into_bytes()).into_owned())
                    .map_err(|e| DockerError::engine(format_args!("logs of container {name}"), e))
            });
        Ok(Box::pin(s))
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<(), DockerError> {
        use ::bollard::volume::CreateVolumeOptions;
        let opts = CreateVolumeOptions {
            name: spec.name.clone(),
            driver: "local".to_string(),
            driver_opts: spec.driver_opts.clone().into_iter().collect(),
            labels: spec.labels.clone().into_iter().collect(),
        };
        self.client
            .create_volume(opts)
            .await
            .map_err(|e| DockerError::engine(format_args!("create volume {}", spec.name), e))?;
        Ok(())
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, DockerError> {
        match self.client.inspect_volume(name).await {
            Ok(v) => Ok(Some(volume_info(v))),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(DockerError::engine(
                format_args!("inspect volume {name}"),
                e,
            )),
        }
    }

    async fn remove_volume(&self, name: &str) -> Result<bool, DockerError> {
        use ::bollard::volume::RemoveVolumeOptions;
        match self
            .client
            .remove_volume(name, Some(RemoveVolumeOptions { force: false }))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) if status_of(&e) == Some(409) => Err(DockerError::in_use(
                format_args!("docker volume {name} is in use"),
                e,
            )),
            Err(e) => Err(DockerError::engine(format_args!("remove volume {name}"), e)),
        }
    }

    async fn list_volumes(
        &self,
        labels: &[(String, String)],
    ) -> Result<Vec<VolumeInfo>, DockerError> {
        use ::bollard::volume::ListVolumesOptions;
        let mut filters = HashMap::new();
        if !labels.is_empty() {
            filters.insert("label".to_string(), label_filters(labels));
        }
        let r = self
            .client
            .list_volumes(Some(ListVolumesOptions { filters }))
            .await
            .map_err(|e| DockerError::engine("list volumes", e))?;
        Ok(r.volumes
            .unwrap_or_default()
            .into_iter()
            .map(volume_info)
            .collect())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, DockerError> {
        use ::bollard::models::{Ipam, IpamConfig};
        use ::bollard::network::CreateNetworkOptions;
        let opts = CreateNetworkOptions {
            name: spec.name.clone(),
            check_duplicate: true,
            driver: "bridge".to_string(),
            internal: false,
            attachable: false,
            ingress: false,
            ipam: Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(spec.subnet.to_string()),
                    gateway: Some(spec.gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            },
            enable_ipv6: false,
            options: HashMap::new(),
            labels: spec.labels.clone().into_iter().collect(),
        };
        let r =
            self.client.create_network(opts).await.map_err(|e| {
                DockerError::engine(format_args!("create network {}", spec.name), e)
            })?;
        Ok(r.id)
    }

    async fn inspect_network(&self, name: &str) -> Result<Option<NetworkInfo>, DockerError> {
        use ::bollard::network::InspectNetworkOptions;
        match self
            .client
            .inspect_network(name, None::<InspectNetworkOptions<String>>)
            .await
        {
            // Docker matches ids by prefix too; only an exact name counts.
            Ok(n) if n.name.as_deref() == Some(name) => Ok(Some(network_info(n))),
            Ok(_) => Ok(None),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(DockerError::engine(
                format_args!("inspect network {name}"),
                e,
            )),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<bool, DockerError> {
        match self.client.remove_network(name).await {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            // 20.10 answers 403 "has active endpoints".
            Err(e) if matches!(status_of(&e), Some(403) | Some(409)) => Err(DockerError::in_use(
                format_args!("docker network {name} is in use"),
                e,
            )),
            Err(e) => Err(DockerError::engine(
                format_args!("remove network {name}"),
                e,
            )),
        }
    }

    async fn list_networks(&self) -> Result<Vec<NetworkInfo>, DockerError> {
        use ::bollard::network::ListNetworksOptions;
        let list = self
            .client
            .list_networks(None::<ListNetworksOptions<String>>)
            .await
            .map_err(|e| DockerError::engine("list networks", e))?;
        Ok(list.into_iter().map(network_info).collect())
    }
}
