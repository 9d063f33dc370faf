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
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, Ordering::Relaxed},
        Arc, Mutex,
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
    mac::Key,
    maps::{answer_bit, rtt_of, HostSlot, ProbeConfig, Stat, WindowKey, KEY_RING},
    verdict::{judge, ours, Verdict},
    wire::parse_echo_reply,
};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

use crate::probe::clock::monotonic_ns;

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
    answered: AtomicU64,
    total_replies: AtomicU32,
    rtt_ns: AtomicU32,
    last_seq: AtomicU32,
}

struct Shared {
    /// Sorted host-order addresses; a host's index is its slot.
    hosts: Vec<u32>,
    slots: Vec<AtomicSlot>,
    /// What counts, as the XDP program's config has it.
    config: Mutex<ProbeConfig>,
    keys: Mutex<[WindowKey; KEY_RING as usize]>,
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
            config: Mutex::new(ProbeConfig {
                hosts: hosts.len() as u32,
                half: hosts.len() as u32,
                ..ProbeConfig::default()
            }),
            keys: Mutex::new([WindowKey::default(); KEY_RING as usize]),
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

/// Judges one datagram as the XDP program judges a frame, and counts it if it is a fresh
/// answer to one of our probes.
fn count(shared: &Shared, packet: &[u8], now: u64) {
    let Some((src, ident, probe)) = parse_echo_reply(packet) else {
        return;
    };
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
