//! The 0-db command subset the agent and its users rely on, with 0-db's
//! semantics and error texts (from its `commands_namespace.c`,
//! `commands_set.c`, `commands_auth.c`):
//!
//! - admin commands (`NSNEW`, `NSDEL`, `NSSET`) need `AUTH <admin>` when the
//!   server was started with `--admin`; without it everybody is admin;
//! - a new namespace is public, without password and without size limit;
//! - `SELECT ns` of a password-protected namespace needs the password,
//!   except that a public one may be selected read-only without it; a wrong
//!   password is `Access denied`;
//! - `SET` fails with `No space left on this namespace` when the data would
//!   exceed `maxsize` (the old value of an overwritten key does not count);
//! - in `seq` mode an empty key allocates the next 4-byte little-endian id;
//! - `--protect` (zdbd.c, redis.c): the `default` namespace gets the admin
//!   password; a new connection starts in it read-only (`SET` is
//!   `Namespace is in read-only mode`) until `SELECT default <admin
//!   password>`; `--maxsize` limits `default` (`NSSET` cannot touch it).
//!
//! Test hook: [`Server::with_failing`] makes named commands fail (the
//! binary reads `ZDB_STANDIN_FAIL`), to exercise a client's rollback.
//!
//! State lives in memory only: a restarted stand-in starts empty (the real
//! 0-db keeps its namespaces on its data volume).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::resp::Reply;

/// The namespace every connection starts in.
pub const DEFAULT_NS: &str = "default";
/// 0-db's key size limit.
pub const MAX_KEY: usize = 255;

/// Key mode of the server (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    User,
    Seq,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "user" => Some(Mode::User),
            "seq" => Some(Mode::Seq),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::User => "userkey",
            Mode::Seq => "sequential",
        }
    }
}

#[derive(Debug)]
struct Namespace {
    /// Distinguishes a namespace from a later one of the same name, so a
    /// connection left in a deleted namespace does not land in its successor.
    generation: u64,
    password: Option<String>,
    public: bool,
    maxsize: u64,
    data: HashMap<Vec<u8>, Vec<u8>>,
    datasize: u64,
    next_id: u32,
}

impl Namespace {
    fn new(generation: u64) -> Self {
        Namespace {
            generation,
            password: None,
            public: true,
            maxsize: 0,
            data: HashMap::new(),
            datasize: 0,
            next_id: 0,
        }
    }
}

#[derive(Debug)]
struct State {
    namespaces: BTreeMap<String, Namespace>,
    generations: u64,
}

/// The shared server state.
#[derive(Debug)]
pub struct Server {
    admin: Option<String>,
    mode: Mode,
    protect: bool,
    failing: Vec<String>,
    state: Mutex<State>,
}

/// One connection's state.
#[derive(Debug, Clone)]
pub struct Session {
    ns: String,
    generation: u64,
    writable: bool,
    admin: bool,
    /// Set by `QUIT`: the connection closes after the reply.
    pub quit: bool,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Server {
    /// `admin`: the admin password (`None` or empty: everybody is admin).
    pub fn new(admin: Option<String>, mode: Mode) -> Self {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(DEFAULT_NS.to_string(), Namespace::new(0));
        Server {
            admin: admin.filter(|a| !a.is_empty()),
            mode,
            protect: false,
            failing: Vec::new(),
            state: Mutex::new(State {
                namespaces,
                generations: 0,
            }),
        }
    }

    /// `--protect`: `default` is locked by the admin password and new
    /// connections are read-only in it. Like 0-db, it needs an admin
    /// password: `Err` without one.
    pub fn with_protect(mut self, protect: bool) -> Result<Self, &'static str> {
        if !protect {
            return Ok(self);
        }
        let Some(admin) = self.admin.clone() else {
            return Err("protected mode only works with admin password");
        };
        self.protect = true;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ns) = st.namespaces.get_mut(DEFAULT_NS) {
            ns.password = Some(admin);
        }
        drop(st);
        Ok(self)
    }

    /// `--maxsize`: the `default` namespace's size limit in bytes.
    pub fn with_default_maxsize(self, maxsize: u64) -> Self {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ns) = st.namespaces.get_mut(DEFAULT_NS) {
            ns.maxsize = maxsize;
        }
        drop(st);
        self
    }

    /// Test hook: these commands (upper case) always fail.
    pub fn with_failing(mut self, commands: impl IntoIterator<Item = String>) -> Self {
        self.failing = commands
            .into_iter()
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty())
            .collect();
        self
    }

    /// Whether admin commands need `AUTH`.
    pub fn has_admin(&self) -> bool {
        self.admin.is_some()
    }

    /// A fresh connection: in `default`, writable.
    pub fn session(&self) -> Session {
        Session {
            ns: DEFAULT_NS.to_string(),
            generation: 0,
            writable: !self.protect,
            admin: self.admin.is_none(),
            quit: false,
        }
    }

    /// Execute one request.
    pub fn handle(&self, s: &mut Session, argv: &[Vec<u8>]) -> Reply {
        let Some(cmd) = argv.first() else {
            return Reply::err("Empty command");
        };
        let cmd = text(cmd).to_ascii_uppercase();
        if self.failing.contains(&cmd) {
            return Reply::err("Internal error (stand-in failure injection)");
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match cmd.as_str() {
            "PING" => match argv.len() {
                1 => Reply::Status("PONG".into()),
                _ => Reply::bulk(argv[1].clone()),
            },
            "QUIT" => {
                s.quit = true;
                Reply::ok()
            }
            "AUTH" => self.auth(s, argv),
            "NSNEW" => self.nsnew(&mut st, s, argv),
            "NSDEL" => self.nsdel(&mut st, s, argv),
            "NSINFO" => nsinfo(&st, argv),
            "NSLIST" => Reply::Array(
                st.namespaces
                    .keys()
                    .map(|k| Reply::bulk(k.as_str()))
                    .collect(),
            ),
            "NSSET" => self.nsset(&mut st, s, argv),
            "SELECT" => select(&st, s, argv),
            "SET" => self.set(&mut st, s, argv),
            "GET" | "EXISTS" | "DEL" | "DBSIZE" => data_command(&mut st, s, &cmd, argv),
            "INFO" => Reply::bulk(format!(
                "# server\nserver_name: 0-db stand-in\nmode: {}\nnamespaces: {}\n",
                self.mode.name(),
                st.namespaces.len()
            )),
            _ => Reply::err("Command not supported"),
        }
    }

    fn auth(&self, s: &mut Session, argv: &[Vec<u8>]) -> Reply {
        let Some(admin) = &self.admin else {
            return Reply::err("Authentication disabled");
        };
        if argv.len() != 2 {
            return Reply::err("Unexpected arguments");
        }
        if argv[1] == admin.as_bytes() {
            s.admin = true;
            Reply::ok()
        } else {
            Reply::err("Access denied")
        }
    }

    fn nsnew(&self, st: &mut State, s: &Session, argv: &[Vec<u8>]) -> Reply {
        if let Some(e) = admin_and_args(s, argv, 2) {
            return e;
        }
        let name = match ns_name(&argv[1]) {
            Ok(n) => n,
            Err(e) => return e,
        };
        if !valid_name(&name) {
            return Reply::err("This name is not allowed");
        }
        if st.namespaces.contains_key(&name) {
            return Reply::err("This namespace is not available");
        }
        st.generations += 1;
        let generation = st.generations;
        st.namespaces.insert(name, Namespace::new(generation));
        Reply::ok()
    }

    fn nsdel(&self, st: &mut State, s: &Session, argv: &[Vec<u8>]) -> Reply {
        if let Some(e) = admin_and_args(s, argv, 2) {
            return e;
        }
        let name = match ns_name(&argv[1]) {
            Ok(n) => n,
            Err(e) => return e,
        };
        if name == DEFAULT_NS {
            return Reply::err("Cannot remove default namespace");
        }
        let Some(ns) = st.namespaces.get(&name) else {
            return Reply::err("This namespace doesn't exists");
        };
        if s.ns == name && s.generation == ns.generation {
            return Reply::err("Cannot remove namespace you're currently using.");
        }
        st.namespaces.remove(&name);
        Reply::ok()
    }

    fn nsset(&self, st: &mut State, s: &Session, argv: &[Vec<u8>]) -> Reply {
        if let Some(e) = admin_and_args(s, argv, 4) {
            return e;
        }
        let name = match ns_name(&argv[1]) {
            Ok(n) => n,
            Err(e) => return e,
        };
        if argv[3].len() > 63 {
            return Reply::err("Invalid value");
        }
        if name == DEFAULT_NS {
            return Reply::err("Cannot update default namespace");
        }
        let Some(ns) = st.namespaces.get_mut(&name) else {
            return Reply::err("Namespace not found");
        };
        let value = text(&argv[3]);
        match text(&argv[2]).as_str() {
            "maxsize" => match value.parse::<u64>() {
                Ok(n) => ns.maxsize = n,
                Err(_) => return Reply::err("Invalid value"),
            },
            "password" if value == "*" => ns.password = None,
            "password" => ns.password = Some(value),
            "public" => ns.public = value.starts_with('1'),
            _ => return Reply::err("Invalid property"),
        }
        Reply::ok()
    }

    fn set(&self, st: &mut State, s: &mut Session, argv: &[Vec<u8>]) -> Reply {
        if argv.len() != 3 {
            return Reply::err("Unexpected arguments");
        }
        let (key, value) = (&argv[1], &argv[2]);
        if key.len() > MAX_KEY {
            return Reply::err("Key too large");
        }
        if !s.writable {
            return Reply::err("Namespace is in read-only mode");
        }
        let mode = self.mode;
        let ns = match current(st, s) {
            Ok(ns) => ns,
            Err(e) => return e,
        };
        let existing = if key.is_empty() {
            None
        } else {
            ns.data.get(key)
        };
        if mode == Mode::Seq && !key.is_empty() && existing.is_none() {
            return Reply::err("Invalid key, only update authorized");
        }
        if mode == Mode::User && key.is_empty() {
            return Reply::err("Invalid argument, key needed");
        }
        let floating = existing.map_or(0, |v| v.len() as u64);
        if existing.is_some_and(|v| v == value) {
            return Reply::Bulk(None);
        }
        if ns.maxsize > 0 && ns.datasize + value.len() as u64 > ns.maxsize + floating {
            return Reply::err("No space left on this namespace");
        }
        let key = if key.is_empty() {
            let id = ns.next_id;
            ns.next_id = ns.next_id.wrapping_add(1);
            id.to_le_bytes().to_vec()
        } else {
            key.clone()
        };
        ns.datasize = ns.datasize - floating + value.len() as u64;
        ns.data.insert(key.clone(), value.clone());
        Reply::bulk(key)
    }
}

fn admin_and_args(s: &Session, argv: &[Vec<u8>], n: usize) -> Option<Reply> {
    if !s.admin {
        return Some(Reply::err("Permission denied"));
    }
    if argv.len() != n {
        return Some(Reply::err("Unexpected arguments"));
    }
    if argv.iter().any(|a| a.is_empty()) {
        return Some(Reply::err("Invalid argument"));
    }
    None
}

fn ns_name(raw: &[u8]) -> Result<String, Reply> {
    if raw.len() > 128 {
        return Err(Reply::err("Namespace too long"));
    }
    Ok(text(raw))
}

/// 0-db refuses names that would escape its data directory.
fn valid_name(n: &str) -> bool {
    !n.is_empty() && !n.starts_with('.') && !n.contains('/') && !n.contains('\0')
}

fn current<'a>(st: &'a mut State, s: &Session) -> Result<&'a mut Namespace, Reply> {
    match st.namespaces.get_mut(&s.ns) {
        Some(ns) if ns.generation == s.generation => Ok(ns),
        _ => Err(Reply::err("Namespace is not available anymore")),
    }
}

fn select(st: &State, s: &mut Session, argv: &[Vec<u8>]) -> Reply {
    if argv.len() < 2 {
        return Reply::err("Invalid argument");
    }
    let name = match ns_name(&argv[1]) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let Some(ns) = st.namespaces.get(&name) else {
        return Reply::err("Namespace not found");
    };
    let mut writable = true;
    if let Some(pw) = &ns.password {
        match argv.get(2) {
            None if !ns.public => return Reply::err("Namespace protected and private"),
            None => writable = false,
            Some(given) if given.as_slice() != pw.as_bytes() => return Reply::err("Access denied"),
            Some(_) => {}
        }
    }
    s.ns = name;
    s.generation = ns.generation;
    s.writable = writable;
    Reply::ok()
}

fn nsinfo(st: &State, argv: &[Vec<u8>]) -> Reply {
    if argv.len() != 2 {
        return Reply::err("Unexpected arguments");
    }
    let name = match ns_name(&argv[1]) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let Some(ns) = st.namespaces.get(&name) else {
        return Reply::err("Namespace not found");
    };
    let yes = |b: bool| if b { "yes" } else { "no" };
    Reply::bulk(format!(
        "# namespace\nname: {name}\nentries: {}\npublic: {}\npassword: {}\ndata_size_bytes: {}\ndata_limits_bytes: {}\n",
        ns.data.len(),
        yes(ns.public),
        yes(ns.password.is_some()),
        ns.datasize,
        ns.maxsize,
    ))
}

fn data_command(st: &mut State, s: &Session, cmd: &str, argv: &[Vec<u8>]) -> Reply {
    let want = if cmd == "DBSIZE" { 1 } else { 2 };
    if argv.len() != want {
        return Reply::err("Unexpected arguments");
    }
    if cmd == "DEL" && !s.writable {
        return Reply::err("Namespace is in read-only mode");
    }
    let ns = match current(st, s) {
        Ok(ns) => ns,
        Err(e) => return e,
    };
    match cmd {
        "GET" => Reply::Bulk(ns.data.get(&argv[1]).cloned()),
        "EXISTS" => Reply::Int(ns.data.contains_key(&argv[1]) as i64),
        "DBSIZE" => Reply::Int(ns.data.len() as i64),
        _ => match ns.data.remove(&argv[1]) {
            Some(v) => {
                ns.datasize -= v.len() as u64;
                Reply::ok()
            }
            None => Reply::err("Key not found"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(srv: &Server, s: &mut Session, words: &[&str]) -> Reply {
        let argv: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        srv.handle(s, &argv)
    }

    fn is_err(r: &Reply, text: &str) -> bool {
        matches!(r, Reply::Error(e) if e == text)
    }

    #[test]
    fn admin_commands_need_auth_when_an_admin_password_is_set() {
        let srv = Server::new(Some("adm".into()), Mode::User);
        let mut s = srv.session();
        assert!(is_err(
            &run(&srv, &mut s, &["NSNEW", "a"]),
            "Permission denied"
        ));
        assert!(is_err(
            &run(&srv, &mut s, &["AUTH", "nope"]),
            "Access denied"
        ));
        assert_eq!(run(&srv, &mut s, &["AUTH", "adm"]), Reply::ok());
        assert_eq!(run(&srv, &mut s, &["NSNEW", "a"]), Reply::ok());
        assert!(is_err(
            &run(&srv, &mut s, &["NSNEW", "a"]),
            "This namespace is not available"
        ));
        assert!(is_err(
            &run(&srv, &mut s, &["NSNEW", "../x"]),
            "This name is not allowed"
        ));
    }

    #[test]
    fn select_checks_password_and_public_read_only() {
        let srv = Server::new(None, Mode::User);
        let mut adm = srv.session();
        run(&srv, &mut adm, &["NSNEW", "n"]);
        run(&srv, &mut adm, &["NSSET", "n", "password", "pw"]);
        run(&srv, &mut adm, &["NSSET", "n", "public", "0"]);
        let mut c = srv.session();
        assert!(is_err(
            &run(&srv, &mut c, &["SELECT", "n"]),
            "Namespace protected and private"
        ));
        assert!(is_err(
            &run(&srv, &mut c, &["SELECT", "n", "bad"]),
            "Access denied"
        ));
        assert_eq!(run(&srv, &mut c, &["SELECT", "n", "pw"]), Reply::ok());
        assert_eq!(run(&srv, &mut c, &["SET", "k", "v"]), Reply::bulk("k"));
        run(&srv, &mut adm, &["NSSET", "n", "public", "1"]);
        let mut r = srv.session();
        assert_eq!(run(&srv, &mut r, &["SELECT", "n"]), Reply::ok());
        assert_eq!(run(&srv, &mut r, &["GET", "k"]), Reply::bulk("v"));
        assert!(is_err(
            &run(&srv, &mut r, &["SET", "k", "w"]),
            "Namespace is in read-only mode"
        ));
    }

    #[test]
    fn maxsize_is_enforced_on_set() {
        let srv = Server::new(None, Mode::User);
        let mut s = srv.session();
        run(&srv, &mut s, &["NSNEW", "n"]);
        run(&srv, &mut s, &["NSSET", "n", "maxsize", "10"]);
        run(&srv, &mut s, &["SELECT", "n"]);
        assert_eq!(
            run(&srv, &mut s, &["SET", "a", "12345678"]),
            Reply::bulk("a")
        );
        assert!(is_err(
            &run(&srv, &mut s, &["SET", "b", "123"]),
            "No space left on this namespace"
        ));
        // Overwriting a key may reuse its old room.
        assert_eq!(
            run(&srv, &mut s, &["SET", "a", "1234567890"]),
            Reply::bulk("a")
        );
        assert_eq!(
            run(&srv, &mut s, &["SET", "a", "1234567890"]),
            Reply::Bulk(None)
        );
        let info = run(&srv, &mut s, &["NSINFO", "n"]);
        let Reply::Bulk(Some(info)) = info else {
            panic!()
        };
        assert!(String::from_utf8(info)
            .unwrap()
            .contains("data_limits_bytes: 10\n"));
    }

    #[test]
    fn nsdel_refuses_default_and_current_and_strands_old_sessions() {
        let srv = Server::new(None, Mode::User);
        let mut s = srv.session();
        run(&srv, &mut s, &["NSNEW", "n"]);
        let mut other = srv.session();
        run(&srv, &mut other, &["SELECT", "n"]);
        assert!(is_err(
            &run(&srv, &mut s, &["NSDEL", "default"]),
            "Cannot remove default namespace"
        ));
        assert!(is_err(
            &run(&srv, &mut other, &["NSDEL", "n"]),
            "Cannot remove namespace you're currently using."
        ));
        assert_eq!(run(&srv, &mut s, &["NSDEL", "n"]), Reply::ok());
        run(&srv, &mut s, &["NSNEW", "n"]);
        assert!(is_err(
            &run(&srv, &mut other, &["GET", "k"]),
            "Namespace is not available anymore"
        ));
        assert_eq!(
            run(&srv, &mut s, &["NSLIST"]),
            Reply::Array(vec![Reply::bulk("default"), Reply::bulk("n")])
        );
    }

    #[test]
    fn protect_locks_the_default_namespace_with_the_admin_password() {
        assert!(Server::new(None, Mode::User).with_protect(true).is_err());
        let srv = Server::new(Some("adm".into()), Mode::User)
            .with_protect(true)
            .unwrap()
            .with_default_maxsize(4);
        let mut s = srv.session();
        assert!(is_err(
            &run(&srv, &mut s, &["SET", "k", "v"]),
            "Namespace is in read-only mode"
        ));
        // AUTH makes an admin, not a writer of default.
        assert_eq!(run(&srv, &mut s, &["AUTH", "adm"]), Reply::ok());
        assert!(is_err(
            &run(&srv, &mut s, &["SET", "k", "v"]),
            "Namespace is in read-only mode"
        ));
        assert!(is_err(
            &run(&srv, &mut s, &["SELECT", "default", "nope"]),
            "Access denied"
        ));
        assert_eq!(run(&srv, &mut s, &["SELECT", "default"]), Reply::ok());
        assert!(is_err(
            &run(&srv, &mut s, &["SET", "k", "v"]),
            "Namespace is in read-only mode"
        ));
        assert_eq!(
            run(&srv, &mut s, &["SELECT", "default", "adm"]),
            Reply::ok()
        );
        assert_eq!(run(&srv, &mut s, &["SET", "k", "1234"]), Reply::bulk("k"));
        assert!(is_err(
            &run(&srv, &mut s, &["SET", "l", "5"]),
            "No space left on this namespace"
        ));
        assert!(is_err(
            &run(&srv, &mut s, &["NSSET", "default", "password", "x"]),
            "Cannot update default namespace"
        ));
    }

    #[test]
    fn failure_injection() {
        let srv = Server::new(None, Mode::User).with_failing(["nsset".to_string()]);
        let mut s = srv.session();
        assert_eq!(run(&srv, &mut s, &["NSNEW", "n"]), Reply::ok());
        assert!(is_err(
            &run(&srv, &mut s, &["NSSET", "n", "public", "0"]),
            "Internal error (stand-in failure injection)"
        ));
    }

    #[test]
    fn seq_mode_allocates_ids() {
        let srv = Server::new(None, Mode::Seq);
        let mut s = srv.session();
        assert_eq!(
            run(&srv, &mut s, &["SET", "", "x"]),
            Reply::bulk(0u32.to_le_bytes().to_vec())
        );
        assert_eq!(
            run(&srv, &mut s, &["SET", "", "y"]),
            Reply::bulk(1u32.to_le_bytes().to_vec())
        );
        assert!(is_err(
            &run(&srv, &mut s, &["SET", "zz", "y"]),
            "Invalid key, only update authorized"
        ));
    }
}
