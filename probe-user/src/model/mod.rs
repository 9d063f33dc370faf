//! What the daemon knows, without I/O: a host's health, the events the prober reports, the
//! notices composed from them, and the status snapshot shown to the outside.

pub mod events;
pub mod health;
