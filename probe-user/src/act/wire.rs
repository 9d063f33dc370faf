//! A VIP on the wire in both families: its IPv4 address through ARP ([`arp`]), its IPv6 one
//! through neighbour discovery ([`ndp`]). Announcing it (gratuitous ARP, unsolicited
//! Neighbour Advertisements), asking whether anyone else answers for it (RFC 5227 probe,
//! DAD-style solicitation), and watching for another holder while we hold it.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::Context as _;

use crate::act::{
    arp::ArpSocket,
    ndp::{self, NdpPacket, NdpSocket},
};

/// The addresses of one VIP, by family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// The ARP and NDP sockets of the VIPs' interface.
pub struct Wire {
    iface: String,
    arp: ArpSocket,
    ndp: NdpSocket,
}

impl Wire {
    /// Opens both sockets on `iface` (current network namespace; `CAP_NET_RAW`).
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        Ok(Self {
            iface: iface.to_string(),
            arp: ArpSocket::open(iface)?,
            ndp: NdpSocket::open(iface).with_context(|| format!("opening NDP on {iface}"))?,
        })
    }

    /// The interface's own MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.arp.mac()
    }

    /// Announces every address in `addrs` at `mac` (ours, or the holder's when giving the VIP
    /// back): gratuitous ARP for IPv4; for IPv6 an unsolicited advertisement to all nodes with
    /// Override set, Solicited clear and Router set only when the interface forwards, from the
    /// VIP itself when it is ours, else from our link-local address. Both are tried; the first
    /// error is returned.
    pub fn announce(&self, addrs: Addrs, mac: [u8; 6]) -> io::Result<()> {
        let v4 = addrs.v4.map(|ip| self.arp.announce(ip, mac));
        let v6 = addrs.v6.map(|target| {
            let source = na_source(target, mac == self.mac(), || ndp::link_local(&self.iface));
            let router = ndp::forwarding(&self.iface);
            let na = NdpPacket::unsolicited(self.mac(), source, target, mac, router);
            self.ndp.send(&na)
        });
        v4.into_iter().chain(v6).collect()
    }

    /// Asks whether another machine answers for any address in `addrs` (an ARP probe and a
    /// DAD-style solicitation, at once), waiting up to `wait`; its MAC if one does.
    pub async fn probe(&self, addrs: Addrs, wait: Duration) -> io::Result<Option<[u8; 6]>> {
        let arp = async {
            match addrs.v4 {
                Some(ip) => self.arp.probe(ip, wait).await,
                None => Ok(None),
            }
        };
        let ndp = async {
            match addrs.v6 {
                Some(ip) => self.ndp.probe(ip, wait).await,
                None => Ok(None),
            }
        };
        let (v4, v6) = tokio::join!(arp, ndp);
        Ok(v4?.or(v6?))
    }
}

/// The source of an advertisement for `target`: the VIP itself when we announce it as ours
/// (an address of the interface), else (announcing it for its holder, when it is no longer
/// ours) our link-local address, or the VIP if we have none.
fn na_source(
    target: Ipv6Addr,
    ours: bool,
    link_local: impl FnOnce() -> Option<Ipv6Addr>,
) -> Ipv6Addr {
    if ours {
        target
    } else {
        link_local().unwrap_or(target)
    }
}

/// While we hold `addrs` on `iface`: probes for them once `every` and watches ARP and
/// NDP, on sockets of its own, until another machine answers for one of them; returns its
/// MAC.
pub async fn guard(iface: &str, addrs: Addrs, every: Duration) -> anyhow::Result<[u8; 6]> {
    let v4 = async {
        match addrs.v4 {
            Some(ip) => {
                let socket = ArpSocket::open(iface)?;
                Ok(socket.guard(ip, every).await?)
            }
            None => std::future::pending().await,
        }
    };
    let v6 = async {
        match addrs.v6 {
            Some(ip) => {
                let socket = NdpSocket::open(iface)?;
                Ok(socket.guard(ip, every).await?)
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        found = v4 => found,
        found = v6 => found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisements_come_from_the_vip_when_ours_else_from_our_link_local() {
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(na_source(vip, true, || Some(ll)), vip);
        assert_eq!(na_source(vip, false, || Some(ll)), ll);
        assert_eq!(na_source(vip, false, || None), vip);
    }
}
