//! Where the per-host reply counters live, behind one trait:
//!
//! * [`crate::probe::xdp::XdpProbe`]: the XDP program counts replies in the kernel, and userspace
//!   reads a memory-mapped array (the real thing);
//! * [`SocketCounters`]: a raw ICMP socket receives every reply in userspace, which judges and
//!   counts it (the ablation the benchmark compares against, to show what XDP buys).

use std::{
    io::IoSliceMut,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrIn},
};
use probe_common::{
    maps::{HostSlot, ProbeConfig, Stat},
    verdict::{judge, Verdict},
    wire::parse_echo_reply,
};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

use crate::probe::clock::monotonic_ns;

pub trait Counters: Send {
    /// Publishes what counts from now on: identifier, window and its cookie.
    fn publish(&mut self, config: ProbeConfig) -> anyhow::Result<()>;
    /// Host `index`'s counters now (index in the sorted host list).
    fn slot(&self, index: usize) -> HostSlot;
    /// Replaces the host list between two windows: `hosts` sorted and unique, `from[i]` the
    /// index host `i` had until now (its counters move with it) or `None` for a new host.
    /// Counting stays paused until the next [`Counters::publish`]. On error nothing changed.
    fn rehost(&mut self, hosts: &[Ipv4Addr], from: &[Option<usize>]) -> anyhow::Result<()> {
        let _ = (hosts, from);
        anyhow::bail!("these counters cannot change their hosts while running")
    }
    /// Why replies were or were not counted, in [`Stat::ALL`] order.
    fn stats(&self) -> [u64; Stat::COUNT as usize];
}

/// Replies received on a raw ICMP socket and counted by a userspace thread.
pub struct SocketCounters {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct AtomicSlot {
    total_replies: AtomicU32,
    rtt_ns: AtomicU32,
}

struct Shared {
    /// Sorted host-order addresses; a host's index is its slot.
    hosts: Vec<u32>,
    slots: Vec<AtomicSlot>,
    /// `ProbeConfig` fields, published by the prober.
    ident: AtomicU32,
    window: AtomicU32,
    cookie: AtomicU32,
    enabled: AtomicU32,
    stats: [AtomicU64; Stat::COUNT as usize],
}

const BATCH: usize = 64;
const BUF: usize = 256;

impl SocketCounters {
    /// Opens the socket on `iface` and starts the receiving thread. `hosts` must be sorted.
    pub fn start(iface: &str, hosts: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .context("opening a raw ICMP socket")?;
        socket
            .bind_device(Some(iface.as_bytes()))
            .with_context(|| format!("binding the ICMP socket to {iface}"))?;
        socket
            .set_recv_buffer_size(64 << 20)
            .context("sizing the receive buffer")?;
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .context("setting the receive timeout")?;
        let shared = Arc::new(Shared {
            hosts: hosts.iter().map(|a| u32::from(*a)).collect(),
            slots: hosts.iter().map(|_| AtomicSlot::default()).collect(),
            ident: AtomicU32::new(0),
            window: AtomicU32::new(0),
            cookie: AtomicU32::new(0),
            enabled: AtomicU32::new(0),
            stats: Default::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("icmp-receive".into())
                .spawn(move || receive(&socket, &shared, &stop))
                .context("starting the receiving thread")?
        };
        Ok(Self {
            shared,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SocketCounters {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Counters for SocketCounters {
    fn publish(&mut self, config: ProbeConfig) -> anyhow::Result<()> {
        let s = &self.shared;
        s.ident.store(config.ident, Relaxed);
        s.window.store(config.window, Relaxed);
        s.cookie.store(config.cookie, Relaxed);
        s.enabled.store(config.enabled, Relaxed);
        Ok(())
    }

    fn slot(&self, index: usize) -> HostSlot {
        let slot = &self.shared.slots[index];
        HostSlot {
            total_replies: slot.total_replies.load(Relaxed),
            rtt_ns: slot.rtt_ns.load(Relaxed),
        }
    }

    fn stats(&self) -> [u64; Stat::COUNT as usize] {
        let mut out = [0; Stat::COUNT as usize];
        for (o, s) in out.iter_mut().zip(&self.shared.stats) {
            *o = s.load(Relaxed);
        }
        out
    }
}

/// The receiving loop: batches of datagrams with `recvmmsg`, each judged like the XDP
/// program judges a frame.
fn receive(socket: &Socket, shared: &Shared, stop: &AtomicBool) {
    let mut bufs = vec![[0u8; BUF]; BATCH];
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    while !stop.load(Relaxed) {
        // The socket's read timeout bounds the wait for the first datagram; the rest are
        // taken if queued.
        let lengths: Vec<usize> = {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(received) => received.map(|msg| msg.bytes).collect(),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(error) => {
                    warn!(%error, "receiving replies failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        };
        let now = monotonic_ns();
        for (len, buf) in lengths.into_iter().zip(&bufs) {
            count(shared, &buf[..len.min(BUF)], now);
        }
    }
}

fn count(shared: &Shared, packet: &[u8], now: u64) {
    let Some((src, ident, probe)) = parse_echo_reply(packet) else {
        return;
    };
    let config = ProbeConfig {
        ident: shared.ident.load(Relaxed),
        window: shared.window.load(Relaxed),
        cookie: shared.cookie.load(Relaxed),
        enabled: shared.enabled.load(Relaxed),
        hosts: shared.hosts.len() as u32,
    };
    let stat = match judge(ident, &probe, &config) {
        Verdict::NotOurs => return,
        Verdict::StaleWindow => Stat::StaleWindow,
        Verdict::WrongCookie => Stat::WrongCookie,
        Verdict::Count => match shared.hosts.binary_search(&src) {
            Err(_) => Stat::UnknownHost,
            Ok(index) => {
                // Only this thread writes the slots: plain load-modify-store is enough.
                let a = &shared.slots[index];
                let mut slot = HostSlot {
                    total_replies: a.total_replies.load(Relaxed),
                    rtt_ns: a.rtt_ns.load(Relaxed),
                };
                slot.record_reply(now, probe.sent_ns());
                a.rtt_ns.store(slot.rtt_ns, Relaxed);
                a.total_replies.store(slot.total_replies, Relaxed);
                Stat::Counted
            }
        },
    };
    shared.stats[stat as usize].fetch_add(1, Relaxed);
}
