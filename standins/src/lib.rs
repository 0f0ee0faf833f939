//! Test stand-ins for the images no test can pull here (no registry): a
//! server speaking the 0-db command subset the agent uses, and a k3s
//! recorder. Production runs the real `threefoldtech/0-db` and
//! `rancher/k3s` images; these only let the provisioners' tests run against
//! the real Docker engine.
//!
//! - [`resp`]: reading RESP requests and writing replies (the stand-in is a
//!   test server, so a small hand-written codec is enough here; the agent
//!   itself talks to 0-db through the `redis` crate).
//! - [`zdb`]: the 0-db namespace semantics (passwords, public read-only
//!   access, admin commands, maxsize on `SET`).
//! - [`json`]: the one-line JSON the k3s recorder writes.
//! - [`signals`]: exit on SIGTERM/SIGINT, which a PID 1 otherwise ignores.

pub mod json;
pub mod resp;
pub mod signals;
pub mod zdb;
