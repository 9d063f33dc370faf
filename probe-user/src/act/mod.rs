//! Acting on the network and telling people: the VIP over rtnetlink, ARP and IPv6 neighbour
//! discovery (over a raw link-layer socket), the failover task, hooks, mail, DNS pools and the
//! cluster's etcd.

pub mod addrwatch;
pub mod arp;
pub mod backoff;
pub mod cluster;
pub mod dns;
pub mod failover;
pub mod hooks;
pub mod link;
pub mod mail;
pub mod ndp;
pub mod vip;
pub mod wire;
