//! Sends echo requests from a send-only raw socket (`IPPROTO_RAW`: it never receives, so the
//! replies cost us nothing in userspace), in batches with `sendmmsg`.

use std::{
    io::{self, IoSlice},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrIn},
};
use probe_common::wire::{EchoPacket, ProbeHeader, ECHO_PACKET_LEN, ICMP_ECHO_REQUEST};
use socket2::{Domain, Protocol, Socket, Type};

use crate::probe::clock::monotonic_ns;

/// What one round of probes carries besides the destination.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub ident: u16,
    pub window: u32,
    pub cookie: u32,
    /// Global round number (also the ICMP sequence number, truncated).
    pub seq: u32,
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
        let probe = ProbeHeader::new(round.window, round.cookie, round.seq, now);
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
                probe,
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
                Ok(n) => sent += n,
                Err(Errno::EINTR) => continue,
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

fn is_per_destination(err: Errno) -> bool {
    matches!(
        err,
        Errno::ENETUNREACH | Errno::EHOSTUNREACH | Errno::EINVAL | Errno::EACCES | Errno::ENOBUFS
    )
}
