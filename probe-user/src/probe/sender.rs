//! Sends echo requests from a send-only raw socket (`IPPROTO_RAW`: it never receives, so the
//! replies cost us nothing in userspace), in batches with `sendmmsg`.

use std::{io, mem, net::Ipv4Addr, os::fd::AsRawFd};

use anyhow::Context as _;
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
    addrs: Vec<libc::sockaddr_in>,
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
            self.addrs.push(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(host.octets()),
                },
                sin_zero: [0; 8],
            });
        }
        self.flush()
    }

    fn flush(&mut self) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = self
            .packets
            .iter_mut()
            .map(|p| libc::iovec {
                iov_base: p.as_mut_ptr().cast(),
                iov_len: p.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .map(|(iov, addr)| {
                // SAFETY: all-zero is a valid msghdr.
                let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
                hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
                hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                hdr.msg_iov = iov;
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        let mut sent = 0;
        while sent < msgs.len() {
            let rest = &mut msgs[sent..];
            // SAFETY: every header points into `iovs`, `self.packets` and `self.addrs`, which
            // outlive the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // A destination the kernel refuses (no route, ...) fails the whole call at that
                // message; skip it and send the rest.
                if sent + 1 < msgs.len() && is_per_destination(&err) {
                    sent += 1;
                    continue;
                }
                return if sent > 0 { Ok(sent) } else { Err(err) };
            }
            sent += n as usize;
        }
        Ok(sent)
    }
}

fn is_per_destination(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EINVAL | libc::EACCES | libc::ENOBUFS)
    )
}
