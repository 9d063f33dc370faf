//! The virtual IP as an alias address on our interface, managed over rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::address::{AddressAttribute, AddressMessage},
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
