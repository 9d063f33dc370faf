//! Probing: which hosts, the round loop that sends echo requests and judges the replies,
//! the raw socket, the XDP program and its maps, and the targets' parsing.

pub mod clock;
pub mod counters;
pub mod prober;
pub mod sender;
pub mod targets;
pub mod xdp;
