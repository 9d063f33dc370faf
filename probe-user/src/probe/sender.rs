//! Sends echo requests from a send-only raw socket (`IPPROTO_RAW`: it never receives, so the
//! replies cost us nothing in userspace), in batches with `sendmmsg`.

use std::{
    io::{self, IoSlice},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrIn},
};
use probe_common::{
    mac::Key,
    wire::{EchoPacket, ProbeHeader, ECHO_PACKET_LEN, ICMP_ECHO_REQUEST},
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

pub struct Sender {
    socket: Socket,
    packets: Vec<[u8; ECHO_PACKET_LEN]>,
    addrs: Vec<Option<SockaddrIn>>,
}

impl Sender {
    /// Opens the raw socket bound to `iface`, so probes leave where the XDP program listens.
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .context("opening a raw IPv4 socket")?;
        socket
            .bind_device(Some(iface.as_bytes()))
            .with_context(|| format!("binding the raw socket to {iface}"))?;
        Ok(Self {
            socket,
            packets: Vec::new(),
            addrs: Vec::new(),
        })
    }

    /// Sends one probe to each of `hosts`; returns how many the kernel accepted.
    pub fn send_round(&mut self, hosts: &[Ipv4Addr], round: Round) -> io::Result<usize> {
        let now = monotonic_ns();
        self.packets.clear();
        self.addrs.clear();
        for host in hosts {
            let mut buf = [0u8; ECHO_PACKET_LEN];
            EchoPacket {
                src: [0; 4],
                dst: host.octets(),
                icmp_type: ICMP_ECHO_REQUEST,
                ident: round.ident,
                seq: round.seq as u16,
                probe: ProbeHeader::signed(
                    &round.key,
                    u32::from(*host),
                    round.ident,
                    round.window,
                    round.seq,
                    now,
                ),
            }
            .write(&mut buf);
            self.packets.push(buf);
            self.addrs
                .push(Some(SockaddrIn::from(SocketAddrV4::new(*host, 0))));
        }
        self.flush()
    }

    /// Sends the batch with `sendmmsg`, as many messages a call as the kernel takes.
    fn flush(&mut self) -> io::Result<usize> {
        let slices: Vec<[IoSlice<'_>; 1]> =
            self.packets.iter().map(|p| [IoSlice::new(p)]).collect();
        let mut headers = MultiHeaders::<SockaddrIn>::preallocate(slices.len(), None);
        let fd = self.socket.as_raw_fd();
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
