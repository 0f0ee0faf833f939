//! `agentctl`: inspect a running agent over its control socket.
//!
//! Exit codes: 0 success, 1 the agent answered with an error about the
//! request, 2 the agent cannot be reached.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Parser)]
#[command(
    name = "agentctl",
    version,
    about = "Inspect the node agent over its control socket.",
    after_help = "Exit codes: 0 success, 1 the agent refused the request, 2 the agent cannot be reached.\n\n\
Examples:\n  agentctl status\n  agentctl --socket ./.agent-dev/agent.sock list --json\n  agentctl show 12-1"
)]
struct Cli {
    /// The agent's control socket [default: /run/agent/agent.sock, or
    /// ./.agent-dev/agent.sock when only that one exists (agent --dev)].
    #[arg(long, env = "AGENT_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Node id, explorer, uptime, last poll, cursor, counters, outbox, Docker.
    Status {
        /// Print the raw answer as JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// The cached reservations: type, user, state, expiry and the Docker
    /// objects each one owns.
    List {
        /// Print the raw answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One reservation: its data (secrets redacted), outcome, result and
    /// Docker state.
    Show {
        /// The reservation id, as `agentctl list` shows it (e.g. 12-1).
        id: String,
        /// Print the raw answer as JSON instead of the human view.
        #[arg(long)]
        json: bool,
    },
    /// Stop taking new work: new reservations get a signed error "node is
    /// draining"; running work goes on until it expires or is deleted.
    /// Kept across restarts. `--undo` takes new work again.
    Drain {
        #[arg(long)]
        undo: bool,
    },
    /// Remove every workload of this node now: drain, then decommission
    /// each one (its user gets a signed error result saying the operator
    /// removed it). Asks for confirmation unless --yes.
    Purge {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// A container's (or k3s node's) logs.
    Logs {
        /// The reservation id of a container or kubernetes workload.
        id: String,
        /// Keep streaming new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Lines of history to show first.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let socket = resolve_socket(cli.socket.take());
    let cli = Resolved {
        socket,
        cmd: cli.cmd,
    };
    let (req, json_out) = match &cli.cmd {
        Cmd::Status { json } => (json!({"cmd": "status"}), *json),
        Cmd::List { json } => (json!({"cmd": "list"}), *json),
        Cmd::Show { id, json } => (json!({"cmd": "show", "id": id}), *json),
        Cmd::Drain { undo } => (json!({"cmd": "drain", "on": !undo}), false),
        Cmd::Purge { yes } => {
            // Workloads are removed through the running agent (it signs
            // each user's result and the explorer's deletion): say so
            // before asking anything.
            if let Err(e) = ask(&cli.socket, &json!({"cmd": "status"})).await {
                let code = unreachable(&cli.socket, &e);
                eprintln!(
                    "agentctl: purge works through the running agent, which removes each workload and tells its user; \
                     start it (systemctl start agent, or agent --dev where you ran it) and purge again. Nothing was removed."
                );
                return code;
            }
            if !yes && !confirm_purge(&cli.socket).await {
                eprintln!("agentctl: purge cancelled; nothing was removed (pass --yes to skip the question)");
                return ExitCode::from(1);
            }
            (json!({"cmd": "purge"}), false)
        }
        Cmd::Logs { id, follow, tail } => {
            let req = json!({"cmd": "logs", "id": id, "follow": follow, "tail": tail});
            return logs(&cli.socket, &req).await;
        }
    };
    let answer = match ask(&cli.socket, &req).await {
        Ok(a) => a,
        Err(e) => return unreachable(&cli.socket, &e),
    };
    if answer["ok"] != json!(true) {
        eprintln!(
            "agentctl: {}",
            answer["error"]
                .as_str()
                .unwrap_or("the agent refused the request")
        );
        return ExitCode::from(1);
    }
    let data = &answer["data"];
    if json_out {
        println!("{}", serde_json::to_string_pretty(data).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    match cli.cmd {
        Cmd::Status { .. } => print_status(data),
        Cmd::List { .. } => print_list(data),
        Cmd::Show { .. } => print_show(data),
        Cmd::Drain { .. } => {
            if data["draining"] == json!(true) {
                println!(
                    "draining: new reservations are refused; {} running workloads go on until they expire or are deleted",
                    data["running"]
                );
            } else {
                println!("drain lifted: taking new reservations again");
            }
        }
        Cmd::Purge { .. } => return purge_wait(&cli.socket, data).await,
        Cmd::Logs { .. } => {}
    }
    ExitCode::SUCCESS
}

/// Ask before a purge: only on a terminal, and only `yes` proceeds.
async fn confirm_purge(socket: &std::path::Path) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        eprintln!("agentctl: purge removes every workload of this node; not on a terminal, so pass --yes to confirm");
        return false;
    }
    let running = ask(socket, &json!({"cmd": "status"}))
        .await
        .ok()
        .and_then(|a| a["data"]["cached"].as_u64())
        .unwrap_or(0);
    print!("Remove all {running} workloads of this node and stop taking new ones? Type yes: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim() == "yes"
}

/// Print what a purge removes, then wait until the agent runs nothing.
async fn purge_wait(socket: &std::path::Path, data: &Value) -> ExitCode {
    let list = data["removing"].as_array().cloned().unwrap_or_default();
    println!("draining, and removing {} workloads:", list.len());
    for w in &list {
        println!(
            "  {} {}",
            w["id"].as_str().unwrap_or("?"),
            w["type"].as_str().unwrap_or("?")
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let left = ask(socket, &json!({"cmd": "status"}))
            .await
            .ok()
            .and_then(|a| a["data"]["cached"].as_u64());
        match left {
            Some(0) => {
                println!("removed: this node runs no workload (agentctl drain --undo takes new work again)");
                return ExitCode::SUCCESS;
            }
            _ if std::time::Instant::now() > deadline => {
                eprintln!(
                    "agentctl: {} workloads still running after 5 minutes (some may wait for others, e.g. a volume in use); see agentctl list",
                    left.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
                );
                return ExitCode::from(1);
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

/// The command line once the socket is known.
struct Resolved {
    socket: PathBuf,
    cmd: Cmd,
}

/// Where `agent --dev` puts its socket, relative to where it runs.
const DEV_SOCKET: &str = ".agent-dev/agent.sock";

/// The socket to use: the one given, else the system one, else (when only
/// it exists) the dev agent's, said on stderr.
fn resolve_socket(given: Option<PathBuf>) -> PathBuf {
    if let Some(s) = given {
        return s;
    }
    let system = PathBuf::from(agent::config::DEFAULT_SOCKET);
    let dev = PathBuf::from(DEV_SOCKET);
    if !system.exists() && dev.exists() {
        eprintln!(
            "agentctl: using the dev agent's socket ./{DEV_SOCKET} ({} does not exist)",
            system.display()
        );
        return dev;
    }
    system
}

fn unreachable(socket: &std::path::Path, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!(
        "agentctl: cannot reach the agent at {}: {e}\n\
         Is the agent running (systemctl status agent)? Point at its socket with --socket PATH or AGENT_SOCKET \
         (agent --dev listens on ./{DEV_SOCKET}).",
        socket.display()
    );
    ExitCode::from(2)
}

/// Stream logs: a JSON status line, then raw text to stdout.
async fn logs(socket: &PathBuf, req: &Value) -> ExitCode {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) => return unreachable(socket, &e),
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = w.write_all(&line).await {
        return unreachable(socket, &e);
    }
    let mut r = BufReader::new(r);
    let mut head = String::new();
    if let Err(e) = r.read_line(&mut head).await {
        return unreachable(socket, &e);
    }
    let head: Value = serde_json::from_str(&head).unwrap_or(Value::Null);
    if head["ok"] != json!(true) {
        eprintln!(
            "agentctl: {}",
            head["error"]
                .as_str()
                .unwrap_or("the agent refused the request")
        );
        return ExitCode::from(1);
    }
    let mut out = tokio::io::stdout();
    match tokio::io::copy(&mut r, &mut out).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => unreachable(socket, &e),
    }
}

async fn ask(socket: &std::path::Path, req: &Value) -> std::io::Result<Value> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        UnixStream::connect(socket),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timed out"))??;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut reply = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        BufReader::new(r).read_line(&mut reply),
    )
    .await
    .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    serde_json::from_str(&reply).map_err(|e| std::io::Error::other(format!("bad answer: {e}")))
}

fn ago(rfc3339: &Value) -> String {
    match rfc3339
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => {
            let s = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .num_seconds()
                .max(0);
            format!("{} ({})", t.to_rfc3339(), human(s) + " ago")
        }
        None => "never".into(),
    }
}

fn human(secs: i64) -> String {
    let s = secs.abs();
    let t = if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else if s < 172_800 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86400)
    };
    if secs < 0 {
        format!("-{t}")
    } else {
        t
    }
}

fn print_status(d: &Value) {
    let docker = if d["docker"]["ok"] == json!(true) {
        format!("ok, {}", d["docker"]["version"].as_str().unwrap_or("?"))
    } else {
        format!("DOWN: {}", d["docker"]["error"].as_str().unwrap_or("?"))
    };
    let counters = d["counters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let mut poll = ago(&d["last_poll"]);
    if d["poll_failures"].as_u64().unwrap_or(0) > 0 {
        poll = format!(
            "{poll}; {} failures, last: {}",
            d["poll_failures"],
            d["poll_error"].as_str().unwrap_or("")
        );
    }
    let rows = [
        ("node id", d["node_id"].as_str().unwrap_or("").to_string()),
        ("explorer", explorer(d)),
        ("version", d["version"].as_str().unwrap_or("").to_string()),
        (
            "work",
            if d["draining"] == json!(true) {
                "DRAINING: new reservations are refused (agentctl drain --undo resumes)".to_string()
            } else {
                "taking new reservations".to_string()
            },
        ),
        ("uptime", human(d["uptime_s"].as_i64().unwrap_or(0))),
        ("last poll", poll),
        ("cursor", d["cursor"].to_string()),
        ("cached", d["cached"].to_string()),
        ("by type", counters),
        ("pending results", d["pending_results"].to_string()),
        ("jobs running", jobs(&d["jobs"])),
        ("docker", docker),
        (
            "wireguard",
            d["wireguard"].as_str().unwrap_or("?").to_string(),
        ),
        ("registration", registration(&d["registration"])),
        ("capacity", capacity(&d["capacity"])),
        ("per user", tenants(&d["tenants"])),
        ("crashes", crashes(&d["crashes"])),
        ("kubernetes", kubernetes(&d["kubernetes"])),
    ];
    for (k, v) in rows {
        println!("{:<16} {v}", format!("{k}:"));
    }
}

/// "2: 5-1 provisioning container for 4m, 7-1 decommissioning volume for 3s".
fn jobs(j: &Value) -> String {
    let running = j["running"].as_u64().unwrap_or(0);
    if running == 0 {
        return "none".into();
    }
    let now = chrono::Utc::now();
    let shown: Vec<String> = j["oldest"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|job| {
                    let since = job["since"]
                        .as_str()
                        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                        .map(|t| human((now - t.with_timezone(&chrono::Utc)).num_seconds().max(0)))
                        .unwrap_or_else(|| "?".into());
                    format!(
                        "{} {} {} for {since}",
                        job["id"].as_str().unwrap_or("?"),
                        job["action"].as_str().unwrap_or("?"),
                        job["type"].as_str().unwrap_or("?"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let more = running as usize - shown.len().min(running as usize);
    let tail = if more > 0 {
        format!(", and {more} more")
    } else {
        String::new()
    };
    format!("{running}: {}{tail}", shown.join(", "))
}

fn kubernetes(k: &Value) -> String {
    match k.as_str().unwrap_or("?") {
        "privileged-unsafe" => {
            "PRIVILEGED-UNSAFE: k3s containers are privileged on the host; every kubernetes tenant owns this node".into()
        }
        other => other.to_string(),
    }
}

/// The explorer in use, and the others given (replicas), if any.
fn explorer(d: &Value) -> String {
    let all = d["explorer"].as_str().unwrap_or("");
    match d["explorer_in_use"].as_str() {
        Some(used) if all.contains(',') => format!("{used} (in use, of {all})"),
        Some(used) => used.to_string(),
        None => all.to_string(),
    }
}

fn registration(r: &Value) -> String {
    if r["registered"] != json!(true) {
        return format!(
            "not registered yet{}",
            r["last_error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    let mut s = format!("registered; last heartbeat {}", ago(&r["last_heartbeat"]));
    if r["failures"].as_u64().unwrap_or(0) > 0 {
        s += &format!(
            "; {} failures, last: {}",
            r["failures"],
            r["last_error"].as_str().unwrap_or("")
        );
    }
    s
}

/// `used/total (free N, reserved R)` per resource.
fn capacity(c: &Value) -> String {
    if c.is_null() {
        return "unknown".into();
    }
    // The heartbeat's rule, so `explorer nodes` shows the same figures:
    // what is used rounds up to whole units, what exists rounds down.
    let row = |label: &str, key: &str, unit: &str, div: u64| {
        let g = |part: &str| c[part][key].as_u64().unwrap_or(0) / div;
        let up = |part: &str| c[part][key].as_u64().unwrap_or(0).div_ceil(div);
        format!(
            "{label} {}/{}{unit} (free {}, reserved {})",
            up("used"),
            g("total"),
            g("free"),
            g("reserved")
        )
    };
    [
        row("cpu", "cpu", " cores", 1),
        row("memory", "memory_mib", " MiB", 1),
        row("ssd", "ssd_mib", " GiB", 1024),
        row("hdd", "hdd_mib", " GiB", 1024),
    ]
    .join("\n                 ")
}

/// What each user holds against the per-user limits, one line each:
/// `<user> networks 1/16, debug 0/2, ports 2/16`.
fn tenants(t: &Value) -> String {
    if t.is_null() {
        return "unknown".into();
    }
    let lim = &t["limits"];
    let row = |u: &Value| {
        ["networks", "debug", "ports"]
            .map(|k| format!("{k} {}/{}", u[k].as_u64().unwrap_or(0), lim[k]))
            .join(", ")
    };
    match t["users"].as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(user, u)| format!("{user} {}", row(u)))
            .collect::<Vec<_>>()
            .join("\n                 "),
        _ => format!(
            "none held (limits: networks {}, debug {}, ports {})",
            lim["networks"], lim["debug"], lim["ports"]
        ),
    }
}

fn crashes(c: &Value) -> String {
    match c.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(id, v)| {
                format!(
                    "{id}: {} recent, {} total, last exit {}",
                    v["recent"], v["total"], v["last_exit_code"]
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => "none".into(),
    }
}

fn print_list(d: &Value) {
    for line in list_lines(d) {
        println!("{line}");
    }
}

/// The lines of `list`'s table (or that there is nothing to list).
fn list_lines(d: &Value) -> Vec<String> {
    let empty = vec![];
    let rows = d.as_array().unwrap_or(&empty);
    if rows.is_empty() {
        return vec!["no cached reservations".into()];
    }
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let obj = docker_objects(r);
            let user = r["user"].as_str().unwrap_or("");
            [
                r["id"].as_str().unwrap_or("").to_string(),
                r["type"].as_str().unwrap_or("").to_string(),
                format!("{}…", user.chars().take(8).collect::<String>()),
                r["state"].as_str().unwrap_or("").to_string(),
                human(r["expires_in_s"].as_i64().unwrap_or(0)),
                obj,
            ]
        })
        .collect();
    let head = ["ID", "TYPE", "USER", "STATE", "EXPIRES IN", "DOCKER OBJECT"];
    let mut w = head.map(|h| h.chars().count());
    for row in &table {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = vec![line(&head.map(String::from)).trim_end().to_string()];
    for row in &table {
        out.push(line(row).trim_end().to_string());
    }
    out
}

/// The DOCKER OBJECT cell of a `list` row: the names the workload's
/// plug-in gave its objects (a zdb's namespace, then its 0-db container),
/// or `-`.
fn docker_objects(row: &Value) -> String {
    let names: Vec<&str> = row["objects"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(", ")
    }
}

/// The human view of `show`: one `key  value` line per fact, then the
/// user's data (secrets already redacted by the agent).
fn print_show(d: &Value) {
    let id = d["id"].as_str().unwrap_or("");
    let r = &d["reservation"];
    let mut rows: Vec<(&str, String)> = Vec::new();
    let kind = r["type"].as_str().unwrap_or("");
    rows.push((
        "reservation",
        if kind.is_empty() {
            id.to_string()
        } else {
            format!("{id} ({kind})")
        },
    ));
    if let Some(user) = r["user_id"].as_str() {
        rows.push(("user", user.to_string()));
    }
    if let Some(created) = r["created"].as_str() {
        rows.push(("created", created.to_string()));
    }
    if let Some(exp) = d["expires_at"]
        .as_str()
        .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
    {
        let left = (exp.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
        let when = if left > 0 {
            format!("in {}", human(left))
        } else {
            format!("{} ago", human(-left))
        };
        rows.push(("expires", format!("{} ({when})", exp.to_rfc3339())));
    }
    let o = &d["outcome"];
    let outcome = match o["state"].as_str() {
        None => "not judged yet".to_string(),
        Some(state) => {
            let at = o["at"].as_str().unwrap_or("");
            match o["error"].as_str().filter(|e| !e.is_empty()) {
                Some(e) => format!("{state} at {at}: {e}"),
                None => format!("{state} at {at}"),
            }
        }
    };
    rows.push(("outcome", outcome));
    if r.is_object() {
        rows.push((
            "state",
            if r["to_delete"] == json!(true) {
                "deletion requested by its user".into()
            } else {
                "running".into()
            },
        ));
    } else {
        rows.push(("state", "not cached on this node".into()));
    }
    let res = &d["result"];
    if res.is_object() {
        let state = res["state"].as_str().unwrap_or("");
        let mut line = state.to_string();
        if let Some(e) = res["error"].as_str().filter(|e| !e.is_empty()) {
            line.push_str(&format!(": {e}"));
        }
        if let Some(obj) = res["data"].as_object() {
            let facts: Vec<String> = obj
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| match v.as_str() {
                    Some(s) => format!("{k}={s}"),
                    None => format!("{k}={v}"),
                })
                .collect();
            if !facts.is_empty() {
                line.push_str(&format!(" ({})", facts.join(" ")));
            }
        }
        rows.push(("result", line));
    }
    let dk = &d["docker"];
    if let Some(name) = dk["container"].as_str() {
        let state = match (dk["state"].as_str(), dk["error"].as_str()) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) => format!("unknown ({e})"),
            _ => "unknown".into(),
        };
        rows.push(("docker", format!("container {name}: {state}")));
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &rows {
        println!("{k:<w$}  {v}");
    }
    if !r["data"].is_null() {
        println!("data:");
        let pretty = serde_json::to_string_pretty(&r["data"]).unwrap_or_default();
        for line in pretty.lines() {
            println!("  {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_shows_the_plugins_object_names_and_what_a_deletion_waits_for() {
        let rows = json!([
            {"id": "3-1", "type": "volume", "user": "0123456789abcdef",
             "state": "deleting (waits for 4-1)", "expires_in_s": -5,
             "objects": ["agent-ABCDEFGH-vol-3-1"], "waits_for": ["4-1"]},
            {"id": "5-1", "type": "zdb", "user": "0123456789abcdef",
             "state": "running", "expires_in_s": 3600,
             "objects": ["5-1-0011223344556677", "agent-ABCDEFGH-zdb-ssd-seq"]},
            {"id": "6-1", "type": "debug", "user": "0123456789abcdef",
             "state": "expiring", "expires_in_s": 0, "objects": []},
        ]);
        let lines = list_lines(&rows);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("ID ") && lines[0].ends_with("DOCKER OBJECT"));
        assert!(
            lines[1].contains("deleting (waits for 4-1)")
                && lines[1].ends_with("agent-ABCDEFGH-vol-3-1"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("5-1-0011223344556677, agent-ABCDEFGH-zdb-ssd-seq"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("expiring") && lines[3].ends_with('-'),
            "{}",
            lines[3]
        );
        assert_eq!(list_lines(&json!([])), vec!["no cached reservations"]);
    }
}
