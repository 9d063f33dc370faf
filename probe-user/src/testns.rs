//! Test support shared by the modules whose tests need a network namespace of their own
//! (ARP, mail, DNS): the one place that moves a thread into a namespace.

use std::{fs::File, io, os::fd::AsRawFd as _};

/// Moves the calling thread (only it) into the network namespace `name` (`/run/netns/name`,
/// as made by `ip netns add`), so the sockets it opens from then on belong there.
pub fn enter(name: &str) {
    let path = format!("/run/netns/{name}");
    let netns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: `netns` is an open namespace fd; setns changes only this thread's namespace.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
}
