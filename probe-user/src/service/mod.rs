//! The running daemon (`xdprobe run`): set-up, the tasks and the channels between them, reload,
//! the HTTP endpoint and its metrics, logging and the capabilities it needs.

pub mod caps;
pub mod daemon;
pub mod dispatch;
pub mod endpoint;
pub mod groups;
pub mod logging;
pub mod metrics;
pub mod pools;
pub mod reload;
pub mod sharding;
pub mod startup;
