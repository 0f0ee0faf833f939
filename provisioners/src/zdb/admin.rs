//! Talking to a 0-db instance over its Redis protocol: connecting, waiting
//! for it to answer, the admin login, namespace lookups and deletion, and
//! dropping an instance left empty.

use std::net::Ipv4Addr;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisConnectionInfo, RedisError};

use super::{Instance, ZdbProvisioner, DEFAULT_NAMESPACE, ZDB_PORT};
use crate::ProvisionError;

/// The text of a 0-db error reply (`-Namespace not found` arrives split
/// into a code and a detail).
fn reply_text(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(c), Some(d)) => format!("{c} {d}"),
        (Some(c), None) => c.to_string(),
        _ => e.to_string(),
    }
}

pub(super) fn zerr(what: &str, e: RedisError) -> ProvisionError {
    ProvisionError::Node(format!("0-db {what}: {}", reply_text(&e)))
}

impl ZdbProvisioner {
    /// Wait until 0-db answers PING.
    pub(super) async fn wait_ready(
        &self,
        inst: &Instance,
        ip: Ipv4Addr,
    ) -> Result<(), ProvisionError> {
        let deadline = tokio::time::Instant::now() + self.ready_timeout;
        loop {
            let err = match connect(ip).await {
                Ok(mut con) => match redis::cmd("PING").query_async::<String>(&mut con).await {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ProvisionError::Node(format!(
                    "0-db container {} at {ip}:{ZDB_PORT} does not answer: {}",
                    inst.name,
                    reply_text(&err)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An admin connection to instance `inst` at `ip`.
    pub(super) async fn admin(
        &self,
        inst: &Instance,
        ip: Ipv4Addr,
    ) -> Result<MultiplexedConnection, ProvisionError> {
        let mut con = connect(ip)
            .await
            .map_err(|e| zerr(&format!("connect to {ip}"), e))?;
        let pw = self.admin_password(&inst.name);
        redis::cmd("AUTH")
            .arg(pw.expose())
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| zerr(&format!("admin login on {}", inst.name), e))?;
        Ok(con)
    }

    /// Remove the instance's container and volume if only `default` is left.
    pub(super) async fn remove_if_empty(
        &self,
        inst: &Instance,
        con: &mut MultiplexedConnection,
    ) -> Result<(), ProvisionError> {
        let left: Vec<String> = redis::cmd("NSLIST")
            .query_async(con)
            .await
            .map_err(|e| zerr("NSLIST", e))?;
        if left.iter().any(|n| n != DEFAULT_NAMESPACE) {
            return Ok(());
        }
        self.docker
            .stop_container(&inst.name, Duration::from_secs(10))
            .await?;
        self.docker.remove_container(&inst.name).await?;
        self.docker.remove_volume(&inst.name).await?;
        tracing::info!(container = %inst.name, "last namespace gone; 0-db container and volume removed");
        Ok(())
    }
}

impl ZdbProvisioner {
    pub(super) async fn namespace_exists(
        con: &mut MultiplexedConnection,
        ns: &str,
    ) -> Result<bool, ProvisionError> {
        match redis::cmd("NSINFO")
            .arg(ns)
            .query_async::<String>(con)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if reply_text(&e) == "Namespace not found" => Ok(false),
            Err(e) => Err(zerr(&format!("NSINFO {ns}"), e)),
        }
    }

    /// NSDEL `ns` in `inst`, then drop the instance if it is empty.
    pub(super) async fn delete_namespace(
        &self,
        inst: &Instance,
        ns: &str,
    ) -> Result<(), ProvisionError> {
        if self.docker.inspect_container(&inst.name).await?.is_none() {
            return Ok(());
        }
        let (ip, _) = self.ensure_instance(inst).await?;
        let mut con = self.admin(inst, ip).await?;
        match redis::cmd("NSDEL")
            .arg(ns)
            .query_async::<()>(&mut con)
            .await
        {
            Ok(()) => {
                tracing::info!(reservation = %ns, container = %inst.name, "0-db namespace deleted")
            }
            Err(e) if reply_text(&e) == "This namespace doesn't exists" => {}
            Err(e) => return Err(zerr(&format!("NSDEL {ns}"), e)),
        }
        self.remove_if_empty(inst, &mut con).await
    }
}

async fn connect(ip: Ipv4Addr) -> redis::RedisResult<MultiplexedConnection> {
    let info = (ip.to_string(), ZDB_PORT)
        .into_connection_info()?
        .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name());
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
