//! `zdb-standin`: a 0-db stand-in server for tests (see `standins::zdb`).
//!
//! Accepts the real `zdb` flags the agent passes (`--listen`, `--port`,
//! `--admin`, `--mode`, `--data`, `--index`, `--protect`, `--maxsize`) and
//! ignores other `--flag [value]` pairs, so a container spec written for
//! the real image runs it unchanged. `ZDB_PORT` and `ADMIN` in the
//! environment are defaults for `--port` and `--admin`. `--protect`
//! without an admin password exits 1, as 0-db does. Test hook:
//! `ZDB_STANDIN_FAIL=NSSET,...` makes those commands fail. Never prints a
//! password.

use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use standins::resp::{read_request, Reply};
use standins::zdb::{Mode, Server};

struct Config {
    listen: String,
    port: u16,
    admin: Option<String>,
    mode: Mode,
    protect: bool,
    maxsize: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: zdb-standin [--listen ADDR] [--port N] [--admin PASSWORD] [--mode user|seq] [--protect] [--maxsize BYTES] [--data DIR] [--index DIR]"
    );
    std::process::exit(2)
}

fn parse_args() -> Config {
    let mut cfg = Config {
        listen: "0.0.0.0".into(),
        port: std::env::var("ZDB_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(9900),
        admin: std::env::var("ADMIN").ok(),
        mode: Mode::User,
        protect: false,
        maxsize: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        if flag == "--protect" {
            cfg.protect = true;
            i += 1;
            continue;
        }
        let value = args.get(i + 1).filter(|v| !v.starts_with("--")).cloned();
        let takes = value.is_some();
        match flag {
            "--help" | "-h" => usage(),
            "--listen" => cfg.listen = value.unwrap_or_else(|| usage()),
            "--port" => {
                cfg.port = value
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--admin" => cfg.admin = Some(value.unwrap_or_else(|| usage())),
            "--mode" => {
                cfg.mode = value
                    .as_deref()
                    .and_then(Mode::parse)
                    .unwrap_or_else(|| usage())
            }
            "--maxsize" => {
                cfg.maxsize = value
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--data" | "--index" => {}
            f if f.starts_with("--") => eprintln!("zdb-standin: ignoring flag {f}"),
            _ => usage(),
        }
        i += if takes { 2 } else { 1 };
    }
    cfg
}

fn serve(srv: Arc<Server>, stream: TcpStream) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(stream);
    let mut session = srv.session();
    loop {
        let reply = match read_request(&mut reader) {
            Ok(None) => return,
            Ok(Some(argv)) if argv.is_empty() => continue,
            Ok(Some(argv)) => srv.handle(&mut session, &argv),
            Err(e) => {
                // A protocol error ends the connection, as in 0-db.
                let _ = Reply::Error(format!("Protocol error: {e}")).write_to(&mut writer);
                let _ = writer.flush();
                return;
            }
        };
        if reply
            .write_to(&mut writer)
            .and_then(|_| writer.flush())
            .is_err()
            || session.quit
        {
            return;
        }
    }
}

fn main() {
    standins::signals::exit_on_term();
    let cfg = parse_args();
    let addr = if cfg.listen.contains(':') {
        format!("[{}]:{}", cfg.listen.trim_matches(['[', ']']), cfg.port)
    } else {
        format!("{}:{}", cfg.listen, cfg.port)
    };
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| {
        eprintln!("zdb-standin: cannot listen on {addr}: {e}");
        std::process::exit(1)
    });
    let failing: Vec<String> = std::env::var("ZDB_STANDIN_FAIL")
        .unwrap_or_default()
        .split(',')
        .map(String::from)
        .collect();
    let srv = match Server::new(cfg.admin, cfg.mode).with_protect(cfg.protect) {
        Ok(s) => s.with_default_maxsize(cfg.maxsize).with_failing(failing),
        Err(e) => {
            eprintln!("zdb-standin: {e}");
            std::process::exit(1)
        }
    };
    let srv = Arc::new(srv);
    eprintln!(
        "zdb-standin: listening on {addr} (mode {:?}, admin password {}, protect {}, default maxsize {})",
        cfg.mode,
        if srv.has_admin() { "set" } else { "not set" },
        cfg.protect,
        cfg.maxsize
    );
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let srv = Arc::clone(&srv);
                std::thread::spawn(move || serve(srv, s));
            }
            Err(e) => eprintln!("zdb-standin: accept: {e}"),
        }
    }
}
