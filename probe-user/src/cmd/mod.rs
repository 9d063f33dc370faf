//! The other commands: `monitor`, `check`, and the `status` and `reload` clients.

pub mod check;
pub mod monitor;
pub mod report;
pub mod status;
