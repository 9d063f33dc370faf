//! The virtual IP as an alias address on our interface, managed over rtnetlink; and the rule
//! that a VIP is never one of the host's own addresses ([`ownership`], pure, and [`listed`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::{
    packet_route::address::{
        AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol,
    },
    Handle,
};

use crate::{act::wire::Addrs, config::vips::Vips};

/// The address protocol (`IFA_PROTO`) xdprobe marks the addresses it adds with
/// (`ip addr` shows `proto 120`): how a VIP of ours is told from the host's own addresses,
/// IPv6 ones above all, which have no label.
pub const ADDR_PROTO: u8 = 120;

/// What adding the VIP did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// At least one of its addresses was added now.
    Now,
    AlreadyPresent,
}

/// A group's VIP (one IPv4 or IPv6 address, or one of each) on interface `index`.
pub struct Vip {
    handle: Handle,
    index: u32,
    vips: Vips,
    label: String,
}

impl Vip {
    /// Opens a netlink connection (its driver runs as a task) for the VIP on interface `index`.
    pub fn new(index: u32, vips: Vips, label: String) -> anyhow::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            index,
            vips,
            label,
        })
    }

    /// The index of the interface the VIP goes on.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Its addresses (`Display`: `192.0.2.100/24,2001:db8::100/64`).
    pub fn net(&self) -> &Vips {
        &self.vips
    }

    /// Its addresses by family, for the wire.
    pub fn addrs(&self) -> Addrs {
        Addrs {
            v4: self.v4(),
            v6: self.v6(),
        }
    }

    /// The IPv4 address, announced by ARP.
    pub fn v4(&self) -> Option<Ipv4Addr> {
        self.vips.v4().map(|n| n.addr())
    }

    /// The IPv6 address, announced by NDP.
    pub fn v6(&self) -> Option<Ipv6Addr> {
        self.vips.v6().map(|n| n.addr())
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Adds every address of the VIP (IPv4 with its label, IPv6 with `IFA_F_NODAD`, usable at
    /// once and never stuck "dadfailed"); addresses already there are fine.
    pub async fn add(&self) -> anyhow::Result<Added> {
        let mut added = Added::AlreadyPresent;
        for net in self.vips.nets() {
            if self.add_one(*net).await? == Added::Now {
                added = Added::Now;
            }
        }
        Ok(added)
    }

    async fn add_one(&self, net: IpNet) -> anyhow::Result<Added> {
        let mut request = self
            .handle
            .address()
            .add(self.index, net.addr(), net.prefix_len());
        let message = request.message_mut();
        message
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                ADDR_PROTO,
            )));
        match net {
            IpNet::V4(_) => message
                .attributes
                .push(AddressAttribute::Label(self.label.clone())),
            IpNet::V6(_) => {
                message.header.flags |= AddressHeaderFlags::Nodad;
                message
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        match request.execute().await {
            Ok(()) => Ok(Added::Now),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => {
                Ok(Added::AlreadyPresent)
            }
            Err(e) => Err(e).with_context(|| format!("adding {net} to interface #{}", self.index)),
        }
    }

    /// Removes every address of the VIP; returns false if none was there.
    pub async fn remove(&self) -> anyhow::Result<bool> {
        let mut removed = false;
        for net in self.vips.nets() {
            removed |= self.remove_one(*net).await?;
        }
        Ok(removed)
    }

    async fn remove_one(&self, net: IpNet) -> anyhow::Result<bool> {
        let Some(msg) = self.find(net.addr()).await? else {
            return Ok(false);
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EADDRNOTAVAIL => {
                Ok(false)
            }
            Err(e) => {
                Err(e).with_context(|| format!("removing {net} from interface #{}", self.index))
            }
        }
    }

    /// Whether any address of the VIP is on the interface now.
    pub async fn is_present(&self) -> anyhow::Result<bool> {
        for addr in self.vips.addrs() {
            if self.find(addr).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn find(&self, addr: IpAddr) -> anyhow::Result<Option<AddressMessage>> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(addr)
            .execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            if has_address(&msg, addr) {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }
}

/// The local address of an address message (IPv4 has both `IFA_LOCAL` and `IFA_ADDRESS`,
/// which differ only on point-to-point links; IPv6 has `IFA_ADDRESS`).
pub fn local_address(a: &AddressMessage) -> Option<IpAddr> {
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn has_address(msg: &AddressMessage, addr: IpAddr) -> bool {
    msg.attributes.iter().any(
        |a| matches!(a, AddressAttribute::Address(a) | AddressAttribute::Local(a) if *a == addr),
    )
}

/// One address as the kernel lists it: what decides whether a VIP found there is ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub addr: IpAddr,
    /// The interface it is on.
    pub index: u32,
    /// Its interface's name (for messages).
    pub iface: String,
    /// The kernel's `secondary` flag: another address of the same subnet came first.
    pub secondary: bool,
    /// Its label (IPv4 only; the interface's name unless one was given).
    pub label: Option<String>,
    /// Its address protocol (`IFA_PROTO`), if set: [`ADDR_PROTO`] on the addresses we add.
    pub proto: Option<u8>,
}

/// What an address already on the system that equals a group's VIP is to that group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Not on any interface: ours to add.
    Absent,
    /// On our interface, as we add a VIP (marked with [`ADDR_PROTO`]; or, IPv4, our label and
    /// not the interface's own address): adopted, as after a restart while holding.
    Ours,
}

/// Why a group's VIP may not be managed: it is one of the host's own addresses, which a
/// failback or `on_exit = "release"` would delete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAVip {
    #[error(
        "invalid `vip`: {addr} is an address of interface {iface}, not a virtual IP of {ours}; \
         xdprobe would delete it on release"
    )]
    OtherInterface {
        addr: IpAddr,
        iface: String,
        ours: String,
    },
    #[error(
        "invalid `vip`: {addr} is {iface}'s own (primary) address, not a virtual IP; \
         xdprobe would delete it on release"
    )]
    Primary { addr: IpAddr, iface: String },
    #[error(
        "invalid `vip`: {addr} is already on {iface} and was not added by xdprobe (no \
         `proto {ADDR_PROTO}`): one of the host's own addresses, which xdprobe would delete on \
         release"
    )]
    Unmarked { addr: IpAddr, iface: String },
    #[error(
        "invalid `vip`: {addr} is already on {iface} with label {found:?}, not the group's \
         label {label:?}: not a VIP xdprobe added; remove it or set `label` to match"
    )]
    ForeignLabel {
        addr: IpAddr,
        iface: String,
        found: String,
        label: String,
    },
}

/// Decides what `vip` already on the system is to a group on interface `index` (`iface`)
/// with `label`, from the addresses `listed`. Adopted only if it looks like a VIP we added:
/// on our interface with our label, and not the interface's primary address (an address
/// labelled with the bare interface name and not secondary: how the host's own address looks).
/// A VIP alone in its subnet (a /32, or another subnet) is not secondary, so our label
/// distinct from the interface name is enough there.
pub fn ownership(
    vip: IpAddr,
    index: u32,
    iface: &str,
    label: &str,
    listed: &[Listed],
) -> Result<Ownership, NotAVip> {
    let mut found = Ownership::Absent;
    for l in listed.iter().filter(|l| l.addr == vip) {
        if l.index != index {
            return Err(NotAVip::OtherInterface {
                addr: vip,
                iface: l.iface.clone(),
                ours: iface.to_string(),
            });
        }
        if l.proto == Some(ADDR_PROTO) {
            found = Ownership::Ours;
            continue;
        }
        if vip.is_ipv6() {
            return Err(NotAVip::Unmarked {
                addr: vip,
                iface: iface.to_string(),
            });
        }
        let their_label = l.label.as_deref().unwrap_or(iface);
        if their_label != label {
            if their_label == iface && !l.secondary {
                return Err(NotAVip::Primary {
                    addr: vip,
                    iface: iface.to_string(),
                });
            }
            return Err(NotAVip::ForeignLabel {
                addr: vip,
                iface: iface.to_string(),
                found: their_label.to_string(),
                label: label.to_string(),
            });
        }
        if !l.secondary && label == iface {
            return Err(NotAVip::Primary {
                addr: vip,
                iface: iface.to_string(),
            });
        }
        found = Ownership::Ours;
    }
    Ok(found)
}

/// Every address on every interface of this network namespace.
pub async fn listed() -> anyhow::Result<Vec<Listed>> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let driver = tokio::spawn(connection);
    let result = list_all(&handle).await;
    driver.abort();
    result
}

async fn list_all(handle: &Handle) -> anyhow::Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
        let index = msg.header.index;
        let Some(addr) = local_address(&msg) else {
            continue;
        };
        let label = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Label(l) => Some(l.clone()),
            _ => None,
        });
        let iface = nix::net::if_::if_indextoname(index)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("#{index}"));
        let proto = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Protocol(p) => Some(u8::from(*p)),
            _ => None,
        });
        out.push(Listed {
            addr,
            index,
            iface,
            secondary: msg.header.flags.contains(AddressHeaderFlags::Secondary),
            label,
            proto,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));

    fn on(index: u32, iface: &str, secondary: bool, label: Option<&str>) -> Listed {
        Listed {
            addr: VIP,
            index,
            iface: iface.into(),
            secondary,
            label: label.map(str::to_string),
            proto: None,
        }
    }

    fn own(listed: &[Listed], label: &str) -> Result<Ownership, NotAVip> {
        ownership(VIP, 2, "eth0", label, listed)
    }

    #[test]
    fn an_absent_vip_is_ours_to_add() {
        let other = Listed {
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            ..on(2, "eth0", false, Some("eth0"))
        };
        assert_eq!(own(&[other], "eth0:1"), Ok(Ownership::Absent));
    }

    #[test]
    fn a_secondary_with_our_label_is_adopted() {
        let l = on(2, "eth0", true, Some("eth0:1"));
        assert_eq!(own(&[l], "eth0:1"), Ok(Ownership::Ours));
    }

    #[test]
    fn a_vip_alone_in_its_subnet_with_our_alias_label_is_adopted() {
        // A /32 VIP beside a /24 is not secondary; its alias label still says it is ours.
        let l = on(2, "eth0", false, Some("eth0:1"));
        assert_eq!(own(&[l], "eth0:1"), Ok(Ownership::Ours));
    }

    #[test]
    fn the_interfaces_own_address_is_refused_naming_it() {
        let l = on(2, "eth0", false, Some("eth0"));
        let err = own(&[l], "eth0:1").unwrap_err();
        assert!(matches!(err, NotAVip::Primary { .. }), "{err:?}");
        assert!(
            err.to_string().contains("192.0.2.100 is eth0's own"),
            "{err}"
        );
        // Even when the group's label is the bare interface name.
        let l = on(2, "eth0", false, Some("eth0"));
        assert!(matches!(own(&[l], "eth0"), Err(NotAVip::Primary { .. })));
    }

    #[test]
    fn a_secondary_own_address_with_the_bare_label_is_not_adopted_under_an_alias() {
        let l = on(2, "eth0", true, Some("eth0"));
        let err = own(&[l], "eth0:1").unwrap_err();
        assert!(matches!(err, NotAVip::ForeignLabel { .. }), "{err:?}");
        assert!(err.to_string().contains("\"eth0:1\""), "{err}");
    }

    #[test]
    fn an_address_we_marked_is_adopted_and_an_unmarked_ipv6_one_is_refused() {
        let marked = Listed {
            proto: Some(ADDR_PROTO),
            ..on(2, "eth0", false, Some("eth0"))
        };
        assert_eq!(own(&[marked], "eth0:1"), Ok(Ownership::Ours));
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        let ours = Listed {
            addr: v6,
            label: None,
            proto: Some(ADDR_PROTO),
            ..on(2, "eth0", false, None)
        };
        assert_eq!(
            ownership(v6, 2, "eth0", "eth0:1", std::slice::from_ref(&ours)),
            Ok(Ownership::Ours)
        );
        let host_own = Listed {
            proto: None,
            ..ours
        };
        let err = ownership(v6, 2, "eth0", "eth0:1", &[host_own]).unwrap_err();
        assert!(matches!(err, NotAVip::Unmarked { .. }), "{err:?}");
        assert!(
            err.to_string().contains("2001:db8::100 is already on eth0"),
            "{err}"
        );
    }

    #[test]
    fn an_address_of_another_interface_is_refused_naming_it() {
        let l = on(7, "dum0", false, Some("dum0"));
        let err = own(&[l], "eth0:1").unwrap_err();
        assert!(
            err.to_string()
                .contains("192.0.2.100 is an address of interface dum0"),
            "{err}"
        );
        // Also when it is on our interface as well.
        let both = [
            on(2, "eth0", true, Some("eth0:1")),
            on(7, "dum0", false, None),
        ];
        assert!(matches!(
            own(&both, "eth0:1"),
            Err(NotAVip::OtherInterface { .. })
        ));
    }
}
