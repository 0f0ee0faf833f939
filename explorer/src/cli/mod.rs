//! The command line: argument parsing and one function per subcommand.

pub mod client;
pub mod duration;
pub mod nodes;
pub mod reserve;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use explorer::ServerConfig;
use reqwest::Method;
use reservation::api::ReservationView;
use reservation::NodeInfo;
use reservation::{Identity, Reservation};

use client::Client;
use reserve::ReserveKind;

const EXAMPLES: &str = "\
Examples:
  explorer serve --listen 0.0.0.0:7700 --data /var/lib/explorer
  explorer serve --listen 0.0.0.0:7700 --database postgres://explorer:secret@db:5432/explorer
  explorer keygen
  explorer reserve volume --node NODE_ID --size 1 --type SSD --duration 2h
  explorer reserve container --node NODE_ID --flist busybox:latest --entrypoint 'sleep 3600' --memory 128
  explorer get 1-1
  explorer delete 1-1
  explorer nodes

Exit codes: 0 ok; 1 the request was refused (bad flags, a 4xx answer, or a
signature that does not verify); 2 the explorer is unreachable, failed, or
is busy (\"explorer busy, retry after N s\": nothing was done, run the
same command again after N seconds).";

/// The reference explorer (the reservation API that node agents poll) and
/// the user CLI that signs reservations for it.
#[derive(Debug, Parser)]
#[command(name = "explorer", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The explorer to talk to (client commands; also accepted after the
    /// command) [default: http://127.0.0.1:7700].
    #[arg(long, env = "EXPLORER_URL", value_name = "URL")]
    pub explorer: Option<String>,
    /// Your user key (32-byte seed; client commands; also accepted after
    /// the command) [default: $HOME/.config/explorer/user.seed].
    #[arg(long, env = "EXPLORER_KEY", value_name = "PATH")]
    pub key: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The explorer a client command talks to. Declared on each client
/// command (not globally) so that `serve --help` does not offer it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct At {
    /// The explorer to talk to [default: $EXPLORER_URL, else
    /// http://127.0.0.1:7700].
    #[arg(long, global = true, value_name = "URL")]
    pub explorer: Option<String>,
}

/// The user key a signing command uses.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Signer {
    /// Your user key (32-byte seed) [default: $EXPLORER_KEY, else
    /// $HOME/.config/explorer/user.seed].
    #[arg(long, global = true, value_name = "PATH")]
    pub key: Option<PathBuf>,
}

/// Where the explorer is when no flag or environment says.
const DEFAULT_EXPLORER: &str = "http://127.0.0.1:7700";

const SERVE_HELP: &str = "\
State: sled under --data (one process; the default), or PostgreSQL with
--database (any number of replicas on one database give the same answers;
the schema is migrated at start, or beforehand with `explorer migrate`).

A PostgreSQL deployment: one database, two replicas behind a load
balancer, agents given both replicas' URLs (they fail over on their own):

  createdb explorer                      # on the database host
  export EXPLORER_DATABASE=postgres://explorer:secret@db:5432/explorer
  explorer migrate                       # optional: serve migrates too
  explorer serve --listen 0.0.0.0:7700   # on host a
  explorer serve --listen 0.0.0.0:7700   # on host b
  # load balancer: health check GET /health (200 ok, 503 database down)
  agent --explorer http://a:7700,http://b:7700

Extensions besides the protocol: GET /health, GET /metrics (Prometheus),
GET /reservations/{id}/results.";

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the explorer server (SIGTERM or ctrl-c stops it).
    #[command(after_help = SERVE_HELP)]
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR")]
        listen: String,
        /// Where the state (sled) lives when --database is not given.
        #[arg(long, default_value = "./explorer-data", value_name = "DIR")]
        data: PathBuf,
        /// Keep the state in PostgreSQL instead of sled, e.g.
        /// postgres://explorer:secret@db:5432/explorer; every server given
        /// the same database serves the same state.
        #[arg(
            long,
            env = "EXPLORER_DATABASE",
            value_name = "URL",
            hide_env_values = true
        )]
        database: Option<String>,
        /// Most connections to --database held at once (the one that
        /// listens for the other replicas' wake-ups included, and, above
        /// 2, the one that sends this replica's wake-ups).
        #[arg(long, env = "EXPLORER_MAX_CONNECTIONS", value_name = "N", default_value_t = explorer::DEFAULT_MAX_CONNECTIONS)]
        max_connections: u32,
    },
    /// Create or update the PostgreSQL schema, then exit (`serve
    /// --database` does it too at start).
    Migrate {
        /// The database, e.g. postgres://explorer:secret@db:5432/explorer.
        #[arg(
            long,
            env = "EXPLORER_DATABASE",
            value_name = "URL",
            hide_env_values = true
        )]
        database: String,
    },
    /// Create your user key (mode 0600) and print your user id.
    Keygen {
        /// Replace an existing key (its identity is lost for good).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        signer: Signer,
    },
    /// Sign a reservation for a node and post it; prints its id.
    #[command(
        after_help = "Secrets (--secret-env, --password, --cluster-secret) are given in\n\
        plaintext and sealed for the node by the CLI: only that node can open them.\n\n\
        Example:\n  explorer reserve volume --node NODE_ID --size 1 --type SSD --duration 1d"
    )]
    Reserve {
        #[command(subcommand)]
        kind: Box<ReserveKind>,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        signer: Signer,
    },
    /// Show a reservation and its result, checking their signatures (the
    /// result against the node and this reservation's own signature).
    Get {
        /// Reservation id, e.g. 1-1.
        id: String,
        #[command(flatten)]
        at: At,
    },
    /// Ask for the early deletion of your reservation: fetches it and signs
    /// its signature with your key, so the deletion ends that one
    /// reservation and nothing else.
    Delete {
        /// Reservation id, e.g. 1-1.
        id: String,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        signer: Signer,
    },
    /// List the registered nodes, their last heartbeat and capacity.
    Nodes {
        /// Print the explorer's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: At,
    },
}

fn key_path(key: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(k) = key {
        return Ok(k);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("HOME is not set: pass --key PATH (or set EXPLORER_KEY)"))?;
    Ok(PathBuf::from(home).join(".config/explorer/user.seed"))
}

fn load_key(path: &Path) -> Result<Identity> {
    if !path.exists() {
        bail!(
            "no user key at {}: create one with `explorer keygen`, or pass --key PATH (env EXPLORER_KEY)",
            path.display()
        );
    }
    Identity::load_or_create(path).map_err(|e| anyhow!("{e}"))
}

pub async fn run(cli: Cli) -> Result<()> {
    let Cli { explorer, key, cmd } = cli;
    // A flag after the command wins over one before it.
    let url = |at: At| {
        at.explorer
            .or(explorer.clone())
            .unwrap_or_else(|| DEFAULT_EXPLORER.into())
    };
    let key = |s: Signer| key_path(s.key.or(key.clone()));
    match cmd {
        Cmd::Serve {
            listen,
            data,
            database,
            max_connections,
        } => {
            let cfg = ServerConfig {
                database,
                max_connections,
                ..ServerConfig::new(data)
            };
            serve(&listen, cfg).await
        }
        Cmd::Migrate { database } => {
            explorer::migrate(&database)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            eprintln!(
                "database {}: schema up to date",
                explorer::redact_database_url(&database)
            );
            Ok(())
        }
        Cmd::Keygen { force, signer } => keygen(&key(signer)?, force),
        Cmd::Reserve { kind, at, signer } => {
            let (t, node, duration, data) = reserve::build(*kind)?;
            let user = load_key(&key(signer)?)?;
            reserve(&Client::new(&url(at))?, &user, t, node, duration, data).await
        }
        Cmd::Get { id, at } => get(&Client::new(&url(at))?, &id).await,
        Cmd::Delete { id, at, signer } => {
            let user = load_key(&key(signer)?)?;
            delete(&Client::new(&url(at))?, &user, &id).await
        }
        Cmd::Nodes { json, at } => list_nodes(&Client::new(&url(at))?, json).await,
    }
}

async fn serve(listen: &str, cfg: ServerConfig) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: pass another --listen ADDR"))?;
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM; ctrl-c still stops");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
    };
    explorer::serve(listener, cfg, shutdown)
        .await
        .map_err(|e| anyhow!("{e}"))
}

fn keygen(path: &Path, force: bool) -> Result<()> {
    if path.exists() {
        if !force {
            let who = Identity::load_or_create(path)
                .map(|i| format!(" (user {})", i.id()))
                .unwrap_or_default();
            bail!(
                "a key already exists at {}{who}: keep it, pass another --key PATH, or --force to replace it (its identity is lost)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the old key {}", path.display()))?;
    }
    let id = Identity::load_or_create(path).map_err(|e| anyhow!("{e}"))?;
    eprintln!("wrote user key {} (mode 0600)", path.display());
    println!("{}", id.id());
    Ok(())
}

async fn reserve(
    client: &Client,
    user: &Identity,
    t: reservation::WorkloadType,
    node: String,
    duration: i64,
    data: String,
) -> Result<()> {
    let r = reserve::signed(user, t, node, duration, data)?;
    let body = serde_json::to_string(&r)?;
    let (_, text) = client
        .request(Method::POST, &["reservations", &r.node_id], Some(body))
        .await?;
    let created: reservation::api::Created = serde_json::from_str(&text)
        .with_context(|| format!("the explorer answered an unexpected body: {text}"))?;
    println!("{}", created.id);
    eprintln!(
        "reserved {t} {} on node {}; see its result with: explorer get {}",
        created.id, r.node_id, created.id
    );
    Ok(())
}

/// Verdict on the signatures of a reservation view, one line each; `false`
/// when one that is present does not verify. The result is checked against
/// the node and the signature of this very reservation, so a result the
/// node signed for another reservation is not taken for this one's.
fn verdicts(v: &ReservationView) -> (Vec<String>, bool) {
    let r: &Reservation = &v.reservation;
    let mut lines = Vec::new();
    let mut ok = true;
    if let Err(e) = r.check_version() {
        ok = false;
        lines.push(format!("version: NOT ACCEPTED by nodes: {e}"));
    }
    match r.verify() {
        Ok(()) => lines.push(format!("user signature: verifies (user {})", r.user_id)),
        Err(e) => {
            ok = false;
            lines.push(format!("user signature: DOES NOT VERIFY: {e}"));
        }
    }
    if r.to_delete {
        match r.verify_delete() {
            Ok(()) => lines.push(format!(
                "deletion: requested and signed by the user; node confirmed: {}",
                if v.deleted { "yes" } else { "not yet" }
            )),
            Err(e) => {
                ok = false;
                lines.push(format!("deletion: requested but DOES NOT VERIFY: {e}"));
            }
        }
    }
    match &v.result {
        None => lines.push("result: none yet (the node has not answered)".into()),
        Some(res) => {
            let what = match res.state {
                reservation::ResultState::Ok => "ok".to_string(),
                reservation::ResultState::Error => format!("error: {}", res.error),
            };
            if res.id != r.id {
                ok = false;
                lines.push(format!(
                    "result: {what}; it is about {:?}, NOT this reservation {:?}: do not trust it",
                    res.id, r.id
                ));
            } else {
                match res.verify(&r.node_id, &r.signature) {
                    Ok(()) => lines.push(format!(
                        "result: {what}; node signature verifies (node {}, for this reservation)",
                        r.node_id
                    )),
                    Err(e) => {
                        ok = false;
                        lines.push(format!(
                            "result: {what}; node signature DOES NOT VERIFY for this reservation: {e} \
                             (a forged result, or one the node signed for another reservation: do not trust it)"
                        ));
                    }
                }
            }
        }
    }
    (lines, ok)
}

async fn fetch(client: &Client, id: &str) -> Result<(ReservationView, String)> {
    let (_, text) = client
        .request(Method::GET, &["reservations", id], None)
        .await?;
    let view: ReservationView = serde_json::from_str(&text)
        .with_context(|| format!("the explorer answered an unexpected body for {id}"))?;
    Ok((view, text))
}

async fn get(client: &Client, id: &str) -> Result<()> {
    let (view, text) = fetch(client, id).await?;
    let pretty: serde_json::Value = serde_json::from_str(&text)?;
    println!("{}", serde_json::to_string_pretty(&pretty)?);
    let (lines, ok) = verdicts(&view);
    for l in lines {
        eprintln!("{l}");
    }
    if !ok {
        return Err(
            client::Refused(format!("reservation {id}: a signature does not verify")).into(),
        );
    }
    Ok(())
}

/// Sign the deletion of reservation `id`: fetched first, because the
/// deletion signs the reservation's own signature (so it can only ever end
/// that one signed reservation). The fetched reservation must be yours and
/// carry your valid signature, or nothing is signed.
async fn delete(client: &Client, user: &Identity, id: &str) -> Result<()> {
    let (view, _) = fetch(client, id).await?;
    let r = &view.reservation;
    if r.user_id != user.id() {
        return Err(client::Refused(format!(
            "reservation {id} belongs to user {}, not to your key (user {}): only its user can delete it; pass that user's --key",
            r.user_id,
            user.id()
        ))
        .into());
    }
    if let Err(e) = r.verify() {
        return Err(client::Refused(format!(
            "reservation {id} as the explorer shows it does not carry your valid signature ({e}); nothing was signed"
        ))
        .into());
    }
    let created = r
        .created
        .map(|c| c.to_rfc3339())
        .unwrap_or_else(|| "?".into());
    eprintln!(
        "deleting the {} reservation {id} on node {} (created {created})",
        r.kind, r.node_id
    );
    let body = serde_json::to_string(&reservation::api::DeleteRequest {
        delete_signature: user.sign_delete(&r.signature),
    })?;
    client
        .request(Method::DELETE, &["reservations", id], Some(body))
        .await?;
    println!("deletion of {id} requested; the node decommissions it on its next poll");
    Ok(())
}

async fn list_nodes(client: &Client, json: bool) -> Result<()> {
    let (_, text) = client.request(Method::GET, &["nodes"], None).await?;
    let list: Vec<NodeInfo> = serde_json::from_str(&text)
        .with_context(|| format!("the explorer answered an unexpected node list: {text}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if list.is_empty() {
        println!("no node registered yet (an agent registers at start)");
    } else {
        print!("{}", nodes::table(&list, chrono::Utc::now()));
    }
    Ok(())
}
