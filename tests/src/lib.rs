//! The test lab: network namespaces joined by a bridge, the real `xdprobe` binary running in
//! them, and the real helpers (an SMTP server, `ip monitor`) the tests observe it with.
//!
//! Every lab uses a unique name prefix and deletes its namespaces when dropped, also when a
//! test fails. Only TEST-NET addresses are used, only inside the lab's own namespaces.

pub mod bind;
pub mod daemon;
pub mod lab;
pub mod smtp;
pub mod traffic;

pub use daemon::{log_number, xdprobe_bin, Daemon};
pub use lab::{AddrWatch, Lab};
pub use smtp::{SecureSmtp, Silent, Smtp};

/// Writes an executable script (for hooks the tests give xdprobe).
pub fn write_script(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, body).expect("writing the script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

/// Panics unless we are root: these tests create namespaces and load XDP programs.
/// (Failing, not skipping: `cargo xtask test` runs them as root.)
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "integration tests need root (network namespaces, XDP): run `cargo xtask test` as root"
        );
    }
}
