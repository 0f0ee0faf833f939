//! Test and benchmark support, not part of the explorer's API: a fresh
//! PostgreSQL database for each test, on the server named by
//! `EXPLORER_TEST_DATABASE` (scripts/test.sh starts a throwaway cluster and
//! sets it), or else on a throwaway cluster this process starts itself
//! with the `initdb` and `pg_ctl` it finds (PATH, then
//! /usr/lib/postgresql/*/bin), as the `postgres` user when run as root.
//! With neither, [`fresh_database`] panics saying how to run the tests: a
//! PostgreSQL test never passes without a database.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use sqlx::{Connection, Executor, PgConnection};

/// The environment variable naming a PostgreSQL server for the tests
/// (`postgres://postgres@127.0.0.1:PORT/postgres`, a role that may create
/// databases).
pub const ENV: &str = "EXPLORER_TEST_DATABASE";

/// Settings of a cluster the tests start: nothing here needs to survive a
/// crash of the machine, and tests run many servers at once.
pub const TEST_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "400"),
];

/// A throwaway PostgreSQL cluster in a temp dir, stopped and removed when
/// dropped.
pub struct Cluster {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// The directory holding `initdb` and `pg_ctl`, if PostgreSQL is installed.
pub fn postgres_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").is_file() && d.join("pg_ctl").is_file() {
                return Some(d);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `bin/tool args...`, as the `postgres` user when we are root
/// (PostgreSQL refuses to run as root).
fn pg_command(bin: &Path, tool: &str) -> Command {
    let exe = bin.join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c
        .output()
        .map_err(|e| format!("{what}: cannot run {c:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

impl Cluster {
    /// initdb (trust auth for local connections) and start a cluster on a
    /// free loopback port with `settings` (`-c name=value`).
    pub fn start(settings: &[(&str, &str)]) -> Result<Cluster, String> {
        let bin = postgres_bin().ok_or_else(|| {
            "PostgreSQL is not installed (no initdb in PATH nor /usr/lib/postgresql/*/bin): apt-get install -y postgresql".to_string()
        })?;
        let dir = tempfile::Builder::new()
            .prefix("explorer-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if is_root() {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(dir.path());
            run(c, "chown the cluster dir to postgres")?;
        }
        let data = dir.path().join("data");
        let mut c = pg_command(&bin, "initdb");
        c.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "-N",
        ])
        .arg("-D")
        .arg(&data);
        run(c, "initdb")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        for (k, v) in settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let mut c = pg_command(&bin, "pg_ctl");
        c.arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-w", "-t", "60", "-l"])
            .arg(dir.path().join("postgres.log"))
            .arg("start");
        if let Err(e) = run(c, "pg_ctl start") {
            let log = std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default();
            return Err(format!("{e}\n{log}"));
        }
        Ok(Cluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            bin,
            data,
            _dir: dir,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }
}

/// The cluster this process started, shared by its tests while any runs.
static OWN: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

fn own_cluster() -> Arc<Cluster> {
    let mut slot = OWN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = slot.upgrade() {
        return c;
    }
    let c = Arc::new(Cluster::start(TEST_SETTINGS).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL tests need a server: run scripts/test.sh (it starts one), or set {ENV}=postgres://USER@HOST:PORT/DB \
             (a role that may create databases), or install PostgreSQL (apt-get install -y postgresql) so the tests start \
             their own. Starting one here failed: {e}"
        )
    }));
    *slot = Arc::downgrade(&c);
    c
}

/// An empty database of its own for one test, dropped with this value.
pub struct TestDatabase {
    /// Its URL, for `ServerConfig::database` / `explorer serve --database`.
    pub url: String,
    name: String,
    admin: String,
    _cluster: Option<Arc<Cluster>>,
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port[/db]
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// A fresh, empty database: on `EXPLORER_TEST_DATABASE`'s server, else on
/// a cluster this process starts. Panics, saying how to run PostgreSQL
/// tests, when there is neither.
pub async fn fresh_database() -> TestDatabase {
    let (admin, cluster) = match std::env::var(ENV) {
        Ok(url) if !url.trim().is_empty() => (url, None),
        _ => {
            let c = tokio::task::spawn_blocking(own_cluster)
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            (c.url.clone(), Some(c))
        }
    };
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "explorer_test_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand_suffix()
    );
    let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to the PostgreSQL test server {} ({ENV}): {e}",
            crate::redact_database_url(&admin)
        )
    });
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
    TestDatabase {
        url: with_database(&admin, &name),
        name,
        admin,
        _cluster: cluster,
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() % 1_000_000
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Not on the test's runtime (it may be shutting down): a thread of
        // its own. Failing to drop leaves a database in a throwaway cluster.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                let _ = conn
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await;
                let _ = conn.close().await;
                Some(())
            })
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5/db?sslmode=disable", "t1"),
            "postgres://u:p@h:5/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5", "t1"), "postgres://h:5/t1");
    }
}
