//! Test support shared by the modules whose tests need a network namespace of their own
//! (ARP, mail, DNS): the one place that moves a thread into a namespace.

use std::fs::File;

use nix::sched::{setns, CloneFlags};

/// Moves the calling thread (only it) into the network namespace `name` (`/run/netns/name`,
/// as made by `ip netns add`), so the sockets it opens from then on belong there.
pub fn enter(name: &str) {
    let path = format!("/run/netns/{name}");
    let netns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    setns(&netns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
}
