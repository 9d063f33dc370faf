//! A raw `AF_PACKET` socket for one EtherType on one interface, read through tokio: what the
//! neighbour-discovery code (and ARP's) needs to send and watch link-layer frames itself,
//! without the kernel's neighbour table or outside tools.
//!
//! It lives in the network namespace of the thread that opened it, whatever thread uses it
//! later.

use std::{
    io, mem,
    os::fd::{AsRawFd, RawFd},
};

use anyhow::Context as _;
use socket2::{Domain, Socket, Type};
use tokio::io::{unix::AsyncFd, Interest};

/// Upper bound on frames discarded by one drain, so a flood cannot keep us draining forever;
/// anything beyond it arrived during the drain and is fresh anyway.
const MAX_DRAIN: usize = 1024;

const ETH_ALEN: u8 = 6;

pub struct PacketSocket {
    fd: AsyncFd<Socket>,
    ifindex: libc::c_int,
    ethertype: u16,
    mac: [u8; 6],
}

impl PacketSocket {
    /// Opens the socket on `iface` (current network namespace) for frames of `ethertype`,
    /// optionally narrowed by a classic BPF `filter` (attached before binding, so nothing
    /// else is ever queued), and learns the interface's MAC. Needs `CAP_NET_RAW` and a tokio
    /// runtime with I/O enabled.
    pub fn open(
        iface: &str,
        ethertype: u16,
        filter: Option<&[libc::sock_filter]>,
    ) -> anyhow::Result<Self> {
        tokio::runtime::Handle::try_current()
            .with_context(|| format!("opening a packet socket on {iface}"))?;
        let ifindex =
            interface_index(iface).with_context(|| format!("looking up interface {iface}"))?;
        // Protocol 0 receives nothing until `bind` names the EtherType and the interface.
        let socket = Socket::new(Domain::PACKET, Type::RAW, None)
            .with_context(|| format!("opening an AF_PACKET socket on {iface}"))?;
        let mac = hardware_address(iface)
            .with_context(|| format!("reading the MAC address of {iface}"))?;
        if let Some(filter) = filter {
            attach_filter(&socket, filter)
                .with_context(|| format!("filtering the packet socket on {iface}"))?;
        }
        let addr = link_address(ifindex, ethertype, [0; 6]);
        // SAFETY: `addr` is an initialised sockaddr_ll, and we pass its exact size.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                sockaddr_ll_len(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("binding the packet socket to {iface}"));
        }
        socket
            .set_nonblocking(true)
            .with_context(|| format!("making the packet socket on {iface} non-blocking"))?;
        // SAFETY: the Socket owns its fd and keeps it open, unchanged, until it is dropped
        // together with this AsyncFd; nothing else closes or replaces it.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .with_context(|| format!("registering the packet socket on {iface} with tokio"))?;
        Ok(Self {
            fd,
            ifindex,
            ethertype,
            mac,
        })
    }

    /// The interface's own MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends `frame` (Ethernet header included) to `dst` on the interface, without waiting:
    /// a full send buffer comes back as `WouldBlock`.
    pub fn send(&self, frame: &[u8], dst: [u8; 6]) -> io::Result<()> {
        retry_once_if_down(|| self.send_once(frame, dst))
    }

    fn send_once(&self, frame: &[u8], dst: [u8; 6]) -> io::Result<()> {
        let to = link_address(self.ifindex, self.ethertype, dst);
        let sent = retry_interrupted(|| {
            // SAFETY: `frame` and `to` are live, initialised buffers of the lengths given, and
            // the kernel only reads them during the call.
            unsafe {
                libc::sendto(
                    self.raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    sockaddr_ll_len(),
                )
            }
        })?;
        if sent != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes of a frame", frame.len()),
            ));
        }
        Ok(())
    }

    /// Discards every frame already queued.
    pub fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 128];
        for _ in 0..MAX_DRAIN {
            match recv_frame(self.fd.get_ref(), &mut buf) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // A link that went down is reported once on the socket; nothing to drain.
                Err(e) if went_down(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits for the next frame that is not our own host's transmission: its length in `buf`
    /// (truncated to `buf`). A link that went down is reported once on the socket, as
    /// `ENETDOWN`: that is no frame and no failure (frames come again once it is up), so it
    /// is skipped here for every caller.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv_frame(fd.get_ref(), buf)) {
                Ok(Ok((_, pkttype))) if pkttype == libc::PACKET_OUTGOING => continue,
                Ok(Err(e)) if went_down(&e) => continue,
                Ok(result) => return result.map(|(len, _)| len),
                Err(_would_block) => continue,
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

/// The interface's index in the current network namespace.
pub fn interface_index(iface: &str) -> io::Result<libc::c_int> {
    let index = nix::net::if_::if_nametoindex(iface).map_err(io::Error::from)?;
    libc::c_int::try_from(index)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "interface index out of range"))
}

/// The interface's MAC, from its link-layer address as the calling thread's network namespace
/// lists it (`/sys/class/net` may show another namespace's view).
pub fn hardware_address(iface: &str) -> io::Result<[u8; 6]> {
    let link = nix::ifaddrs::getifaddrs()
        .map_err(io::Error::from)?
        .filter(|a| a.interface_name == iface)
        .find_map(|a| a.address.and_then(|addr| addr.as_link_addr().copied()))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no link-layer address (no such interface?)",
            )
        })?;
    if link.hatype() != libc::ARPHRD_ETHER {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("not an Ethernet interface (ARPHRD {})", link.hatype()),
        ));
    }
    link.addr()
        .ok_or_else(|| io::Error::other("no MAC address"))
}

/// Link-layer address of `mac` on interface `ifindex` for frames of `ethertype`.
fn link_address(ifindex: libc::c_int, ethertype: u16, mac: [u8; 6]) -> libc::sockaddr_ll {
    let mut sll_addr = [0u8; 8];
    sll_addr[..6].copy_from_slice(&mac);
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::c_ushort,
        sll_protocol: ethertype.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: ETH_ALEN,
        sll_addr,
    }
}

fn sockaddr_ll_len() -> libc::socklen_t {
    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t
}

/// `SO_ATTACH_FILTER`: the kernel queues only frames `filter` accepts.
fn attach_filter(socket: &Socket, filter: &[libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: u16::try_from(filter.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `program` points at `filter`, which outlives the call; the kernel copies the
    // instructions and never writes through the pointer.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const program).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads one queued frame without waiting: its length in `buf` (truncated to `buf`) and
/// the packet type the kernel tagged it with (`PACKET_HOST`, `PACKET_OUTGOING`, ...).
fn recv_frame(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    let mut from = link_address(0, 0, [0; 6]);
    let mut from_len = sockaddr_ll_len();
    let len = retry_interrupted(|| {
        // SAFETY: `buf` is writable for `buf.len()` bytes, and `from`/`from_len` describe a
        // writable sockaddr_ll of the size given; the kernel writes no more than that.
        unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        }
    })?;
    Ok((len, from.sll_pkttype))
}

/// ENETDOWN: the link went down (a frame not sent or not received, no failure).
fn went_down(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENETDOWN)
}

/// A link that went down leaves ENETDOWN pending on a packet socket, reported by the next
/// send even once the link is up again: one more try.
fn retry_once_if_down(mut send: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    match send() {
        Err(e) if went_down(&e) => send(),
        result => result,
    }
}

/// Runs a libc call returning a byte count or -1, retrying on EINTR.
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        match usize::try_from(call()) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_enetdown_is_tried_once_more() {
        let mut calls = 0;
        let result = retry_once_if_down(|| {
            calls += 1;
            if calls == 1 {
                Err(io::Error::from_raw_os_error(libc::ENETDOWN))
            } else {
                Ok(())
            }
        });
        assert!(result.is_ok());
        assert_eq!(calls, 2);
        let mut calls = 0;
        let result = retry_once_if_down(|| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::ENETDOWN))
        });
        assert!(result.is_err());
        assert_eq!(calls, 2, "tried twice, not forever");
        let mut calls = 0;
        let _ = retry_once_if_down(|| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::EPERM))
        });
        assert_eq!(calls, 1, "other errors are not retried");
    }
}
