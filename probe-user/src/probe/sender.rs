//! Sends echo requests from a send-only raw socket (`IPPROTO_RAW`: it never receives, so the
//! replies cost us nothing in userspace), in batches with `sendmmsg`.

use std::{
    io::{self, IoSlice},
    net::{IpAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrLike},
};
use probe_common::{
    host::HostKey,
    mac::Key,
    wire::{
        write_echo6, EchoPacket, ProbeHeader, ECHO6_PACKET_LEN, ECHO_PACKET_LEN,
        ICMPV6_ECHO_REQUEST, ICMP_ECHO_REQUEST,
    },
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::probe::clock::monotonic_ns;

/// What a batch of probes carries besides the destination (each probe's MAC is its own).
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub ident: u16,
    pub window: u32,
    /// The probe sequence (also the ICMP sequence number, truncated).
    pub seq: u32,
    /// The window's MAC key.
    pub key: Key,
}

/// One send-only raw socket per family, opened when the first host of that family is probed.
pub struct Sender {
    iface: String,
    ifindex: u32,
    v4: Batch<SockaddrIn, ECHO_PACKET_LEN>,
    v6: Batch<SockaddrIn6, ECHO6_PACKET_LEN>,
}

/// A family's socket and the batch being sent on it.
struct Batch<A, const LEN: usize> {
    socket: Option<Socket>,
    packets: Vec<[u8; LEN]>,
    addrs: Vec<Option<A>>,
}

impl<A, const LEN: usize> Default for Batch<A, LEN> {
    fn default() -> Self {
        Self {
            socket: None,
            packets: Vec::new(),
            addrs: Vec::new(),
        }
    }
}

impl Sender {
    /// Opens the raw IPv4 socket bound to `iface`, so probes leave where the XDP program
    /// listens (the IPv6 one is opened with the first IPv6 host).
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .with_context(|| format!("no interface {iface}"))?;
        let mut sender = Self {
            iface: iface.to_string(),
            ifindex,
            v4: Batch::default(),
            v6: Batch::default(),
        };
        sender.v4.socket = Some(open_ipv4(iface)?);
        Ok(sender)
    }

    /// Sends one probe to each of `hosts`; returns how many the kernel accepted.
    pub fn send_round(&mut self, hosts: &[IpAddr], round: Round) -> io::Result<usize> {
        let now = monotonic_ns();
        self.v4.packets.clear();
        self.v4.addrs.clear();
        self.v6.packets.clear();
        self.v6.addrs.clear();
        for host in hosts {
            let probe = ProbeHeader::signed(
                &round.key,
                HostKey::from(*host),
                round.ident,
                round.window,
                round.seq,
                now,
            );
            match host {
                IpAddr::V4(v4) => {
                    let mut buf = [0u8; ECHO_PACKET_LEN];
                    EchoPacket {
                        src: [0; 4],
                        dst: v4.octets(),
                        icmp_type: ICMP_ECHO_REQUEST,
                        ident: round.ident,
                        seq: round.seq as u16,
                        probe,
                    }
                    .write(&mut buf);
                    self.v4.packets.push(buf);
                    self.v4
                        .addrs
                        .push(Some(SockaddrIn::from(SocketAddrV4::new(*v4, 0))));
                }
                IpAddr::V6(v6) => {
                    let mut buf = [0u8; ECHO6_PACKET_LEN];
                    write_echo6(
                        ICMPV6_ECHO_REQUEST,
                        round.ident,
                        round.seq as u16,
                        &probe,
                        &mut buf,
                    );
                    self.v6.packets.push(buf);
                    // A link-local host is on our interface; the scope says so.
                    let scope = if v6.is_unicast_link_local() {
                        self.ifindex
                    } else {
                        0
                    };
                    self.v6
                        .addrs
                        .push(Some(SockaddrIn6::from(SocketAddrV6::new(*v6, 0, 0, scope))));
                }
            }
        }
        if !self.v6.packets.is_empty() && self.v6.socket.is_none() {
            self.v6.socket = Some(open_ipv6(&self.iface).map_err(io::Error::other)?);
        }
        let sent4 = self.v4.flush();
        let sent6 = self.v6.flush();
        match (sent4, sent6) {
            (Ok(a), Ok(b)) => Ok(a + b),
            (Ok(a), Err(_)) if a > 0 => Ok(a),
            (Err(_), Ok(b)) if b > 0 => Ok(b),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }
}

/// The IPv4 socket: `IPPROTO_RAW` (we write the IPv4 header; it never receives).
fn open_ipv4(iface: &str) -> anyhow::Result<Socket> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("opening a raw IPv4 socket")?;
    socket
        .bind_device(Some(iface.as_bytes()))
        .with_context(|| format!("binding the raw socket to {iface}"))?;
    Ok(socket)
}

/// The IPv6 socket: raw ICMPv6, the kernel writing the IPv6 header and the checksum. It would
/// receive every ICMPv6 message; a filter that passes none keeps the replies (counted by the
/// XDP program) from costing us anything here.
fn open_ipv6(iface: &str) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .context("opening a raw ICMPv6 socket")?;
    socket
        .bind_device(Some(iface.as_bytes()))
        .with_context(|| format!("binding the raw ICMPv6 socket to {iface}"))?;
    block_all_icmpv6(&socket).context("filtering the ICMPv6 socket")?;
    Ok(socket)
}

/// `ICMP6_FILTER` blocking every type: a send-only ICMPv6 socket.
pub fn block_all_icmpv6(socket: &Socket) -> io::Result<()> {
    icmpv6_filter(socket, &[])
}

/// `ICMP6_FILTER` passing only the ICMPv6 `types` listed.
pub fn icmpv6_filter(socket: &Socket, types: &[u8]) -> io::Result<()> {
    // struct icmp6_filter: 256 bits, a set bit blocks its type.
    let mut filter = [u32::MAX; 8];
    for t in types {
        filter[usize::from(*t) / 32] &= !(1 << (u32::from(*t) % 32));
    }
    // SAFETY: `filter` is a live 32-byte buffer, the size of struct icmp6_filter, and the
    // kernel only reads `optlen` bytes from it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `<netinet/icmp6.h>`'s ICMP6_FILTER option (not in the libc crate).
const ICMP6_FILTER: libc::c_int = 1;

impl<A: SockaddrLike + Copy, const LEN: usize> Batch<A, LEN> {
    /// Sends the batch with `sendmmsg`, as many messages a call as the kernel takes.
    fn flush(&mut self) -> io::Result<usize> {
        if self.packets.is_empty() {
            return Ok(0);
        }
        let Some(socket) = &self.socket else {
            return Err(io::Error::other("no socket for this address family"));
        };
        let slices: Vec<[IoSlice<'_>; 1]> =
            self.packets.iter().map(|p| [IoSlice::new(p)]).collect();
        let mut headers = MultiHeaders::<A>::preallocate(slices.len(), None);
        let fd = socket.as_raw_fd();
        let mut sent = 0;
        let mut pressure = 0;
        while sent < slices.len() {
            let result = sendmmsg(
                fd,
                &mut headers,
                &slices[sent..],
                &self.addrs[sent..],
                [],
                MsgFlags::empty(),
            )
            .map(Iterator::count);
            match result {
                Ok(n) => {
                    sent += n;
                    pressure = 0;
                }
                Err(Errno::EINTR) => continue,
                // The device queue is full: back-pressure, not any host's fault. Give it a
                // moment to drain and send the rest.
                Err(Errno::ENOBUFS | Errno::EAGAIN) if pressure < MAX_PRESSURE_RETRIES => {
                    pressure += 1;
                    std::thread::sleep(PRESSURE_PAUSE);
                }
                // A destination the kernel refuses (no route, ...) fails the whole call at that
                // message; skip it and send the rest.
                Err(e) if sent + 1 < slices.len() && is_per_destination(e) => sent += 1,
                Err(_) if sent > 0 => return Ok(sent),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    }
}

/// Errors that name one destination (no route to it, ...): that message is skipped.
fn is_per_destination(err: Errno) -> bool {
    matches!(
        err,
        Errno::ENETUNREACH | Errno::EHOSTUNREACH | Errno::EINVAL | Errno::EACCES
    )
}

/// How often, and how long, a full device queue is waited for within one batch (at most
/// 2 ms in all).
const MAX_PRESSURE_RETRIES: u32 = 20;
const PRESSURE_PAUSE: Duration = Duration::from_micros(100);
