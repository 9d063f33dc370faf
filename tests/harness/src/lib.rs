//! The test harness of xdprobe: one copy of everything its tests (probe-user's unit tests, the
//! integration tests in `tests/`) and `cargo xtask` (the demo, the bench farm) build on.
//!
//! - [`netns`]: network namespaces removed on drop, and by a janitor process if the run is
//!   killed; [`enter`]: running a closure or a future on a thread inside one.
//! - [`lab`]: hosts (one namespace each) on a bridge or on one veth pair, and `ip monitor`.
//! - [`daemon`]: the real `xdprobe` (or any long-running program) with its output captured.
//! - [`smtp`] and [`bind`]: real mail and DNS servers (aiosmtpd, BIND 9) inside a namespace.
//! - [`etcd`]: a real etcd cluster, one member per namespace on a lab's bridge, with members
//!   killed, restarted and cut off by nftables, and `etcdctl`.
//! - [`traffic`]: ping, forged replies, packet loss, a flapping link; [`insider`]: a probed
//!   host that turns the probes it receives into replies from the primary.
//! - [`arpwatch`]: a client asking who has the VIP every few milliseconds, recording who
//!   answers (two holders at once).
//! - [`load`]: busy cores that report the CPU time they got.
//! - [`responder`]: an ICMP echo responder that answers after a delay per address (this
//!   kernel has no netem); [`far`]: the lab of far hosts it serves, and reading `ping`.
//! - [`output`]: xdprobe's JSON lines by type, the end of a log.
//! - [`files`]: scratch files and directories removed on drop, scripts; [`cmd`]: running
//!   programs; [`root`]: the check privileged tests start with.
//!
//! Only TEST-NET and benchmarking addresses are used, only inside namespaces the harness made.

pub mod arpwatch;
pub mod bind;
pub mod cluster;
pub mod cmd;
pub mod container;
pub mod daemon;
pub mod enter;
pub mod etcd;
pub mod far;
pub mod files;
pub mod insider;
pub mod lab;
pub mod load;
pub mod netns;
pub mod output;
pub mod responder;
pub mod root;
pub mod smtp;
pub mod traffic;

pub use cmd::run;
pub use daemon::{log_number, logged_number, xdprobe_bin, xdprobe_deb, Daemon};
pub use etcd::EtcdCluster;
pub use far::{far_hosts, FarHost, FarLab};
pub use files::{write_script, TempDir, TempFile};
pub use lab::{AddrWatch, Lab};
pub use netns::Namespaces;
pub use root::require_root;
pub use smtp::{SecureSmtp, Silent, Smtp};
