//! The reservation protocol's wire model and crypto, version 2 (see
//! `docs/PROTOCOL.md`).
//!
//! This crate knows nothing of tokio, Docker or disks beyond the node's seed
//! file: it is the part an outside client could copy to interoperate.
//!
//! - [`frame`]: the length-prefixed framing of every signed message.
//! - [`model`]: [`Reservation`], [`WorkloadResult`] (the protocol's "Result")
//!   and [`WorkloadType`], with Go-compatible JSON.
//! - [`workloads`]: the one list of workload types (`workload_types!`,
//!   from `types.rs`, makes [`WorkloadType`] and [`Workload`] of it), one
//!   typed struct per workload's `data`, parsing and range checks that name
//!   the offending field.
//! - [`identity`]: ed25519 identities (users and nodes), the seed file,
//!   signing and verification of reservations, deletions and results.
//! - [`node`]: the node's signed registration and heartbeat, their
//!   [`Capacity`], and the `GET /nodes` entries.
//! - [`api`]: the explorer's other bodies (`POST` answer, deletion request
//!   and confirmation, the `GET /reservations/{id}` view).
//! - [`seal`]: `crypto_box_seal` secrets, opened with the node key.
//! - [`netid`]: the node-local network id.

pub mod api;
pub mod error;
pub mod frame;
pub mod identity;
pub mod model;
pub mod netid;
pub mod node;
pub mod seal;
#[macro_use]
mod types;
pub mod workloads;

pub use error::Error;
pub use identity::{verify_signature, Identity, KeyCache};
pub use model::{
    id_numbers, new_nonce, valid_id, Reservation, ResultState, WorkloadResult, WorkloadType,
    PROTOCOL_VERSION,
};
pub use netid::network_local_id;
pub use node::{Capacity, NodeInfo};
pub use seal::{seal_for, Secret};
pub use workloads::{Workload, WorkloadData};
