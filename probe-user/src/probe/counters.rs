//! Where the per-host reply counters live, behind one trait:
//!
//! * [`crate::probe::xdp::XdpProbe`]: the XDP program counts replies in the kernel, and userspace
//!   reads a memory-mapped array (the real thing);
//! * [`SocketCounters`]: a raw ICMP socket (and a raw ICMPv6 one for IPv6 hosts) receives every
//!   reply in userspace, which judges and counts it (the ablation the benchmark compares
//!   against, to show what XDP buys).

use std::{
    io::IoSliceMut,
    net::IpAddr,
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, Ordering::Relaxed},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrLike},
};
use probe_common::{
    host::HostKey,
    mac::Key,
    maps::{answer_bit, rtt_of, HostSlot, ProbeConfig, Stat, WindowKey, KEY_RING},
    verdict::{judge, ours, Verdict},
    wire::{parse_echo6_reply, parse_echo_reply, ProbeHeader, ICMPV6_ECHO_REPLY},
};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

use crate::probe::{clock::monotonic_ns, sender::icmpv6_filter};

/// What the counters accept from now on: our identifier, the newest probe sequence that may
/// be out, and how late a reply may be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accept {
    pub ident: u16,
    pub seq_max: u32,
    pub timeout: Duration,
}

pub trait Counters: Send {
    /// Publishes what counts from now on (and turns counting on).
    fn publish(&mut self, accept: Accept) -> anyhow::Result<()>;
    /// Installs window `window`'s MAC key, before any probe of it is sent.
    fn set_key(&mut self, window: u32, key: Key) -> anyhow::Result<()>;
    /// Host `index`'s counters now (index in the sorted host list).
    fn slot(&self, index: usize) -> HostSlot;
    /// Clears host `index`'s answer bits `mask`, before probes with those bits are sent.
    fn clear(&self, index: usize, mask: u64);
    /// Replaces the host list between two windows: `hosts` sorted and unique, `from[i]` the
    /// index host `i` had until now (its counters move with it) or `None` for a new host.
    /// Counting goes on. On error nothing changed.
    fn rehost(&mut self, hosts: &[IpAddr], from: &[Option<usize>]) -> anyhow::Result<()> {
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
    threads: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct AtomicSlot {
    answered: AtomicU64,
    total_replies: AtomicU32,
    rtt_ns: AtomicU32,
    last_seq: AtomicU32,
}

struct Shared {
    /// Sorted host keys; a host's index is its slot.
    hosts: Vec<HostKey>,
    slots: Vec<AtomicSlot>,
    /// What counts, as the XDP program's config has it.
    config: Mutex<ProbeConfig>,
    keys: Mutex<[WindowKey; KEY_RING as usize]>,
    stats: [AtomicU64; Stat::COUNT as usize],
}

const BATCH: usize = 64;
const BUF: usize = 256;

impl SocketCounters {
    /// Opens the sockets on `iface` (ICMPv6 only with IPv6 hosts) and starts a receiving thread
    /// each. `hosts` must be sorted.
    pub fn start(iface: &str, hosts: &[IpAddr]) -> anyhow::Result<Self> {
        let v4 = receiving_socket(iface, Domain::IPV4, Protocol::ICMPV4)?;
        let v6 = if hosts.iter().any(IpAddr::is_ipv6) {
            let socket = receiving_socket(iface, Domain::IPV6, Protocol::ICMPV6)?;
            icmpv6_filter(&socket, &[ICMPV6_ECHO_REPLY]).context("filtering the ICMPv6 socket")?;
            Some(socket)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            hosts: hosts.iter().map(|a| HostKey::from(*a)).collect(),
            slots: hosts.iter().map(|_| AtomicSlot::default()).collect(),
            config: Mutex::new(ProbeConfig {
                hosts: hosts.len() as u32,
                half: hosts.len() as u32,
                ..ProbeConfig::default()
            }),
            keys: Mutex::new([WindowKey::default(); KEY_RING as usize]),
            stats: Default::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut counters = Self {
            shared,
            stop,
            threads: Vec::new(),
        };
        let (shared, stop) = (Arc::clone(&counters.shared), Arc::clone(&counters.stop));
        counters.threads.push(
            std::thread::Builder::new()
                .name("icmp-receive".into())
                .spawn(move || receive::<SockaddrIn>(&v4, &shared, &stop, parse_v4))
                .context("starting the receiving thread")?,
        );
        if let Some(v6) = v6 {
            let (shared, stop) = (Arc::clone(&counters.shared), Arc::clone(&counters.stop));
            counters.threads.push(
                std::thread::Builder::new()
                    .name("icmp6-receive".into())
                    .spawn(move || receive::<SockaddrIn6>(&v6, &shared, &stop, parse_v6))
                    .context("starting the ICMPv6 receiving thread")?,
            );
        }
        Ok(counters)
    }
}

/// A raw socket of `domain` and `protocol` on `iface`, with a large buffer and a short read
/// timeout (so its thread sees a stop soon).
fn receiving_socket(iface: &str, domain: Domain, protocol: Protocol) -> anyhow::Result<Socket> {
    let socket =
        Socket::new(domain, Type::RAW, Some(protocol)).context("opening a raw ICMP socket")?;
    socket
        .bind_device(Some(iface.as_bytes()))
        .with_context(|| format!("binding the ICMP socket to {iface}"))?;
    socket
        .set_recv_buffer_size(64 << 20)
        .context("sizing the receive buffer")?;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .context("setting the receive timeout")?;
    Ok(socket)
}

/// A received echo reply: the host it comes from, its identifier and our probe header.
type Reply = (HostKey, u16, ProbeHeader);

/// An IPv4 datagram (IPv4 header first): the reply's source, identifier and probe header.
fn parse_v4(packet: &[u8], _: &SockaddrIn) -> Option<Reply> {
    parse_echo_reply(packet).map(|(src, ident, probe)| (HostKey::v4(src), ident, probe))
}

/// An ICMPv6 message (the kernel strips the IPv6 header): the source is the sender's address.
fn parse_v6(packet: &[u8], from: &SockaddrIn6) -> Option<Reply> {
    let host = HostKey::v6(from.ip().octets());
    if host.is_ipv4_space() {
        return None;
    }
    parse_echo6_reply(packet).map(|(ident, probe)| (host, ident, probe))
}

impl Drop for SocketCounters {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A lock whose holder panicked still holds plain data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Counters for SocketCounters {
    fn publish(&mut self, accept: Accept) -> anyhow::Result<()> {
        let mut config = lock(&self.shared.config);
        config.ident = u32::from(accept.ident);
        config.seq_max = accept.seq_max;
        config.timeout_ns = u64::try_from(accept.timeout.as_nanos()).unwrap_or(u64::MAX);
        config.enabled = 1;
        Ok(())
    }

    fn set_key(&mut self, window: u32, key: Key) -> anyhow::Result<()> {
        lock(&self.shared.keys)[(window % KEY_RING) as usize] = WindowKey {
            window,
            valid: 1,
            key,
        };
        Ok(())
    }

    fn slot(&self, index: usize) -> HostSlot {
        let slot = &self.shared.slots[index];
        HostSlot {
            answered: slot.answered.load(Relaxed),
            total_replies: slot.total_replies.load(Relaxed),
            rtt_ns: slot.rtt_ns.load(Relaxed),
            last_seq: slot.last_seq.load(Relaxed),
            _pad: 0,
        }
    }

    fn clear(&self, index: usize, mask: u64) {
        self.shared.slots[index]
            .answered
            .fetch_and(!mask, Ordering::SeqCst);
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
fn receive<A: SockaddrLike + Copy>(
    socket: &Socket,
    shared: &Shared,
    stop: &AtomicBool,
    parse: fn(&[u8], &A) -> Option<Reply>,
) {
    let mut bufs = vec![[0u8; BUF]; BATCH];
    let mut headers = MultiHeaders::<A>::preallocate(BATCH, None);
    while !stop.load(Relaxed) {
        // The socket's read timeout bounds the wait for the first datagram; the rest are
        // taken if queued.
        let lengths: Vec<(usize, Option<A>)> = {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(received) => received.map(|msg| (msg.bytes, msg.address)).collect(),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(error) => {
                    warn!(%error, "receiving replies failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        };
        let now = monotonic_ns();
        for ((len, from), buf) in lengths.into_iter().zip(&bufs) {
            if let Some(reply) = from.and_then(|from| parse(&buf[..len.min(BUF)], &from)) {
                count(shared, reply, now);
            }
        }
    }
}

/// Judges one datagram as the XDP program judges a frame, and counts it if it is a fresh
/// answer to one of our probes.
fn count(shared: &Shared, (src, ident, probe): Reply, now: u64) {
    let config = *lock(&shared.config);
    if !ours(ident, &probe, &config) {
        return;
    }
    let stat = match shared.hosts.binary_search(&src) {
        Err(_) => Stat::UnknownHost,
        Ok(index) => {
            let key = lock(&shared.keys)[(probe.window() % KEY_RING) as usize];
            match judge(ident, &probe, &config, src, &key, now) {
                Verdict::Stale => Stat::Stale,
                Verdict::Forged => Stat::Forged,
                Verdict::Fresh => {
                    let slot = &shared.slots[index];
                    let bit = answer_bit(probe.seq());
                    if slot.answered.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
                        Stat::Replayed
                    } else {
                        slot.total_replies.fetch_add(1, Relaxed);
                        slot.rtt_ns.store(rtt_of(now, probe.sent_ns()), Relaxed);
                        slot.last_seq.store(probe.seq(), Relaxed);
                        Stat::Counted
                    }
                }
            }
        }
    };
    shared.stats[stat as usize].fetch_add(1, Relaxed);
}
