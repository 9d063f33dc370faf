//! Probing: which hosts, the round loop that sends echo requests and judges the replies, the
//! raw socket, the XDP program and its maps (or the socket baseline), the targets' parsing and
//! the run's statistics.

pub mod clock;
pub mod counters;
pub mod hosts;
pub mod plan;
pub mod prober;
pub mod rounds;
pub mod rtt;
pub mod sender;
pub mod stats;
pub mod targets;
pub mod timer;
pub mod wheel;
pub mod xdp;
