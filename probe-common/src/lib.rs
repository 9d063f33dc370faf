//! Everything the XDP program and the `xdprobe` daemon must agree on.
//!
//! * [`wire`]: the layout of our echo probes (IPv4 + ICMP + [`wire::ProbeHeader`]) and a builder
//!   for them;
//! * [`mac`]: the per-host, per-probe authenticator (SipHash-2-4) every reply must echo;
//! * [`maps`]: the `#[repr(C)]` values stored in the kernel maps;
//! * [`verdict`]: the pure decision "does this echo reply count", shared so the kernel and the
//!   host tests run the very same code.
//!
//! The crate is `no_std` and has no I/O, so it builds for the BPF target and for the host alike.
#![no_std]

pub mod host;
pub mod mac;
pub mod maps;
pub mod verdict;
pub mod wire;
