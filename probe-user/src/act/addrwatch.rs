//! Address and link events of one interface, from rtnetlink's multicast groups
//! (RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR, RTNLGRP_LINK): what the failover task needs to
//! notice a held VIP removed by someone else, or flushed by the link going down, and the link
//! coming back. [`event`] turns a kernel message into an [`NetEvent`] (pure, unit-tested);
//! [`watch`] does the I/O.

use std::net::IpAddr;

use anyhow::Context as _;
use futures::StreamExt as _;
use rtnetlink::{
    packet_core::NetlinkPayload,
    packet_route::{
        link::{LinkFlags, LinkMessage},
        RouteNetlinkMessage,
    },
    MulticastGroup,
};
use tokio::sync::mpsc;
use tracing::error;

/// Something that happened on the watched interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// An address was removed (by anyone, us included).
    Removed(IpAddr),
    /// The link's state: `running` when it is administratively and operationally up
    /// (`IFF_UP` and `IFF_RUNNING`), so that frames sent now leave.
    Link { running: bool },
}

/// The event `msg` is for interface `index`, if any.
pub fn event(msg: &RouteNetlinkMessage, index: u32) -> Option<NetEvent> {
    match msg {
        RouteNetlinkMessage::DelAddress(a) if a.header.index == index => {
            super::vip::local_address(a).map(NetEvent::Removed)
        }
        RouteNetlinkMessage::NewLink(l) if l.header.index == index => Some(link_event(l)),
        _ => None,
    }
}

fn link_event(l: &LinkMessage) -> NetEvent {
    let flags = l.header.flags;
    NetEvent::Link {
        running: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
    }
}

/// Subscribes to the address and link events of interface `index`; they arrive on the
/// receiver until it is dropped. If the kernel's event socket fails, that is logged and the
/// receiver ends.
pub fn watch(index: u32) -> anyhow::Result<mpsc::UnboundedReceiver<NetEvent>> {
    let groups = [
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Link,
    ];
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)
        .context("subscribing to rtnetlink address and link events")?;
    let driver = tokio::spawn(connection);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                message = messages.next() => {
                    let Some((message, _)) = message else {
                        error!(index, "rtnetlink event socket closed: a removed VIP is no longer noticed");
                        break;
                    };
                    let NetlinkPayload::InnerMessage(inner) = message.payload else {
                        continue;
                    };
                    if let Some(e) = event(&inner, index) {
                        if tx.send(e).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        driver.abort();
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};

    use super::*;

    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));

    fn address(index: u32, attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut a = AddressMessage::default();
        a.header.index = index;
        a.attributes = attributes;
        a
    }

    fn link(index: u32, flags: LinkFlags) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.flags = flags;
        l
    }

    #[test]
    fn a_removed_address_of_our_interface_is_an_event() {
        let v4 = address(
            2,
            vec![AddressAttribute::Address(VIP), AddressAttribute::Local(VIP)],
        );
        let del = RouteNetlinkMessage::DelAddress(v4.clone());
        assert_eq!(event(&del, 2), Some(NetEvent::Removed(VIP)));
        assert_eq!(event(&del, 3), None, "another interface");
        assert_eq!(event(&RouteNetlinkMessage::NewAddress(v4), 2), None);
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        let del6 = RouteNetlinkMessage::DelAddress(address(2, vec![AddressAttribute::Address(v6)]));
        assert_eq!(event(&del6, 2), Some(NetEvent::Removed(v6)));
        let bare = RouteNetlinkMessage::DelAddress(address(2, vec![]));
        assert_eq!(event(&bare, 2), None);
    }

    #[test]
    fn the_local_address_wins_on_point_to_point_links() {
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let a = address(
            2,
            vec![
                AddressAttribute::Address(peer),
                AddressAttribute::Local(VIP),
            ],
        );
        assert_eq!(
            event(&RouteNetlinkMessage::DelAddress(a), 2),
            Some(NetEvent::Removed(VIP))
        );
    }

    #[test]
    fn a_link_is_running_only_when_up_and_running() {
        let cases = [
            (
                LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp,
                true,
            ),
            (LinkFlags::Up, false),
            (LinkFlags::Running, false),
            (LinkFlags::empty(), false),
        ];
        for (flags, running) in cases {
            let msg = RouteNetlinkMessage::NewLink(link(2, flags));
            assert_eq!(
                event(&msg, 2),
                Some(NetEvent::Link { running }),
                "{flags:?}"
            );
        }
        let other = RouteNetlinkMessage::NewLink(link(3, LinkFlags::Up));
        assert_eq!(event(&other, 2), None);
    }
}
