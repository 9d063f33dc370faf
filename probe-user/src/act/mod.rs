//! Acting on the network and telling people: the VIP over rtnetlink, ARP, the failover
//! task, hooks, mail and DNS pools.

pub mod addrwatch;
pub mod arp;
pub mod backoff;
pub mod dns;
pub mod failover;
pub mod hooks;
pub mod mail;
pub mod vip;
