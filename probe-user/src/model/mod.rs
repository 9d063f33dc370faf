//! What the daemon knows, without I/O: a host's health, what the prober reports, the notices
//! composed from it, and the status snapshot shown to the outside.

pub mod cluster;
pub mod events;
pub mod health;
pub mod notice;
pub mod shard;
pub mod snapshot;
