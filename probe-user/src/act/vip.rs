//! The virtual IP as an alias address on our interface, managed over rtnetlink; and the rule
//! that a VIP is never one of the host's own addresses ([`ownership`], pure, and [`listed`]).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
    Handle,
};

/// What adding the VIP did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    Now,
    AlreadyPresent,
}

pub struct Vip {
    handle: Handle,
    index: u32,
    net: Ipv4Net,
    label: String,
}

impl Vip {
    /// Opens a netlink connection (its driver runs as a task) for the VIP on interface `index`.
    pub fn new(index: u32, net: Ipv4Net, label: String) -> anyhow::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            index,
            net,
            label,
        })
    }

    /// The index of the interface the VIP goes on.
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Adds the VIP with its label; an address that is already there is fine.
    pub async fn add(&self) -> anyhow::Result<Added> {
        let mut request = self.handle.address().add(
            self.index,
            IpAddr::V4(self.net.addr()),
            self.net.prefix_len(),
        );
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Label(self.label.clone()));
        match request.execute().await {
            Ok(()) => Ok(Added::Now),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => {
                Ok(Added::AlreadyPresent)
            }
            Err(e) => {
                Err(e).with_context(|| format!("adding {} to interface #{}", self.net, self.index))
            }
        }
    }

    /// Removes the VIP; returns false if it was not there.
    pub async fn remove(&self) -> anyhow::Result<bool> {
        let Some(msg) = self.find().await? else {
            return Ok(false);
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EADDRNOTAVAIL => {
                Ok(false)
            }
            Err(e) => Err(e)
                .with_context(|| format!("removing {} from interface #{}", self.net, self.index)),
        }
    }

    /// Whether the VIP is on the interface now.
    pub async fn is_present(&self) -> anyhow::Result<bool> {
        Ok(self.find().await?.is_some())
    }

    async fn find(&self) -> anyhow::Result<Option<AddressMessage>> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(IpAddr::V4(self.net.addr()))
            .execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            if has_address(&msg, self.net.addr()) {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }
}

fn has_address(msg: &AddressMessage, addr: Ipv4Addr) -> bool {
    msg.attributes.iter().any(|a| {
        matches!(a, AddressAttribute::Address(IpAddr::V4(a)) | AddressAttribute::Local(IpAddr::V4(a)) if *a == addr)
    })
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
}

/// What an address already on the system that equals a group's VIP is to that group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Not on any interface: ours to add.
    Absent,
    /// On our interface, as we add a VIP (our label, and not the interface's own address):
    /// adopted, as after a restart while holding.
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
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        let Some(addr) = local.or(address) else {
            continue;
        };
        let label = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Label(l) => Some(l.clone()),
            _ => None,
        });
        let iface = nix::net::if_::if_indextoname(index)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("#{index}"));
        out.push(Listed {
            addr,
            index,
            iface,
            secondary: msg.header.flags.contains(AddressHeaderFlags::Secondary),
            label,
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
