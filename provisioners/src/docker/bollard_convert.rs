//! Conversions between this crate's plain structs and bollard's models,
//! for [`super::BollardDocker`]: the create-container request built from a
//! [`ContainerSpec`] and its options, and the engine's answers turned into
//! [`ContainerInfo`], [`NetworkInfo`] and [`VolumeInfo`].

use std::collections::HashMap;

use ::bollard::container::{Config, NetworkingConfig};
use ::bollard::models::{
    ContainerInspectResponse, ContainerSummary, EndpointIpamConfig, EndpointSettings, HostConfig,
    Mount, MountPointTypeEnum, MountTypeEnum, Network, PortBinding, RestartPolicy,
    RestartPolicyNameEnum, Volume,
};

use super::types::{
    Confinement, ContainerExtras, ContainerInfo, ContainerNet, ContainerRuns, ContainerSpec,
    Endpoint, Labels, NetworkInfo, VolumeInfo,
};

pub(super) fn labels_of(m: Option<HashMap<String, String>>) -> Labels {
    m.unwrap_or_default().into_iter().collect()
}

/// `key=value` label filters, as Docker's list endpoints take them.
pub(super) fn label_filters(labels: &[(String, String)]) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The create request of `spec`, plus `extras` (k3s) and `confine`
/// (tenant containers). Secret values are exposed here, into the request
/// body only.
pub(super) fn create_config(
    spec: &ContainerSpec,
    extras: &ContainerExtras,
    confine: &Confinement,
) -> Config<String> {
    let mut env = spec.env.clone();
    env.extend(
        spec.secret_env
            .iter()
            .map(|(k, v)| format!("{k}={}", v.expose())),
    );
    let mounts = spec
        .mounts
        .iter()
        .map(|m| Mount {
            typ: Some(MountTypeEnum::VOLUME),
            source: Some(m.volume.clone()),
            target: Some(m.target.clone()),
            ..Default::default()
        })
        .collect();
    let mut exposed = HashMap::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.container_port, if p.udp { "udp" } else { "tcp" });
        exposed.insert(key.clone(), HashMap::new());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: confine.port_address.map(|a| a.to_string()),
                host_port: Some(p.host_port.to_string()),
            });
    }
    let (network_mode, networking) = match &spec.network {
        ContainerNet::None => ("none".to_string(), None),
        ContainerNet::Bridge { network, ipv4 } => {
            let ep = EndpointSettings {
                ipam_config: ipv4.map(|ip| EndpointIpamConfig {
                    ipv4_address: Some(ip.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            (
                network.clone(),
                Some(NetworkingConfig {
                    endpoints_config: HashMap::from([(network.clone(), ep)]),
                }),
            )
        }
    };
    let host = HostConfig {
        nano_cpus: Some(spec.nano_cpus),
        memory: Some(spec.memory),
        mounts: Some(mounts),
        network_mode: Some(network_mode),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        restart_policy: Some(RestartPolicy {
            name: Some(if spec.restart_unless_stopped {
                RestartPolicyNameEnum::UNLESS_STOPPED
            } else {
                RestartPolicyNameEnum::NO
            }),
            maximum_retry_count: None,
        }),
        privileged: Some(extras.privileged),
        pids_limit: confine.pids_limit,
        security_opt: confine
            .no_new_privileges
            .then(|| vec!["no-new-privileges:true".to_string()]),
        cap_drop: (!confine.cap_drop.is_empty()).then(|| confine.cap_drop.clone()),
        // The operator's tenant runtime, else the extras' own.
        runtime: confine.runtime.clone().or_else(|| extras.runtime.clone()),
        tmpfs: (!extras.tmpfs.is_empty()).then(|| extras.tmpfs.clone().into_iter().collect()),
        ..Default::default()
    };
    Config {
        image: Some(spec.image.clone()),
        env: Some(env),
        entrypoint: spec.entrypoint.clone(),
        cmd: if spec.entrypoint.is_none() {
            extras.cmd.clone()
        } else {
            None
        },
        tty: Some(spec.tty),
        open_stdin: Some(spec.open_stdin),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        labels: Some(spec.labels.clone().into_iter().collect()),
        host_config: Some(host),
        networking_config: networking,
        ..Default::default()
    }
}

pub(super) fn container_info(c: ContainerInspectResponse) -> ContainerInfo {
    let labels = labels_of(c.config.as_ref().and_then(|c| c.labels.clone()));
    let image = c
        .config
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let state = c
        .state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let networks = endpoints(c.network_settings.and_then(|n| n.networks));
    let volumes = volume_names(c.mounts);
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image,
        labels,
        state,
        networks,
        volumes,
    }
}

pub(super) fn network_info(n: Network) -> NetworkInfo {
    let cfg = n.ipam.and_then(|i| i.config).unwrap_or_default();
    NetworkInfo {
        id: n.id.unwrap_or_default(),
        name: n.name.unwrap_or_default(),
        driver: n.driver.unwrap_or_default(),
        labels: labels_of(n.labels),
        subnets: cfg.iter().filter_map(|c| c.subnet.clone()).collect(),
        gateways: cfg.iter().filter_map(|c| c.gateway.clone()).collect(),
        containers: n
            .containers
            .unwrap_or_default()
            .into_values()
            .filter_map(|c| c.name)
            .collect(),
    }
}

pub(super) fn volume_info(v: Volume) -> VolumeInfo {
    VolumeInfo {
        name: v.name,
        labels: v.labels.into_iter().collect(),
        driver_opts: v.options.into_iter().collect(),
    }
}

/// A container of a list answer (fewer fields than an inspect).
pub(super) fn container_summary(c: ContainerSummary) -> ContainerInfo {
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        image: c.image.unwrap_or_default(),
        labels: labels_of(c.labels),
        state: c.state.unwrap_or_default(),
        networks: endpoints(c.network_settings.and_then(|n| n.networks)),
        volumes: volume_names(c.mounts),
    }
}

/// A container's addresses on each network it joined (inspect and list
/// answers alike).
fn endpoints<N: FromIterator<(String, Endpoint)>>(
    networks: Option<std::collections::HashMap<String, bollard::models::EndpointSettings>>,
) -> N {
    networks
        .unwrap_or_default()
        .into_iter()
        .map(|(k, e)| {
            (
                k,
                Endpoint {
                    ipv4: e.ip_address.unwrap_or_default(),
                    ipv6: e.global_ipv6_address.unwrap_or_default(),
                },
            )
        })
        .collect()
}

/// The names of the Docker volumes a container mounts.
fn volume_names(mounts: Option<Vec<bollard::models::MountPoint>>) -> Vec<String> {
    mounts
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.typ == Some(MountPointTypeEnum::VOLUME))
        .filter_map(|m| m.name)
        .collect()
}

/// Restart count and last exit of an inspected container.
pub(super) fn container_runs(c: ContainerInspectResponse) -> ContainerRuns {
    let st = c.state.unwrap_or_default();
    ContainerRuns {
        state: st.status.map(|s| s.to_string()).unwrap_or_default(),
        restart_count: c.restart_count.unwrap_or(0).max(0) as u64,
        exit_code: st.exit_code.unwrap_or(0),
        // Docker answers the zero time for a container that never exited.
        finished_at: st
            .finished_at
            .filter(|t| !t.is_empty() && !t.starts_with("0001-01-01")),
        oom_killed: st.oom_killed.unwrap_or(false),
    }
}
