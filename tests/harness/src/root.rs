//! Whether we run as root, and the check every privileged test starts with.
//!
//! Tests that need root (network namespaces, BPF programs, raw sockets, servers inside a
//! namespace) live in modules called `privileged`, so `cargo test -- --skip privileged` runs
//! the rest as any user. Run without root, a privileged test fails, never skips: a green run
//! must mean the tests ran.

use nix::unistd::geteuid;

/// What a privileged test says when it is not run as root.
pub const NEEDS_ROOT: &str = "this test needs root (network namespaces, BPF, raw sockets): run \
    `cargo xtask test` as root, or leave the privileged tests out with \
    `cargo test -- --skip privileged`";

/// Whether the effective user is root.
pub fn is_root() -> bool {
    geteuid().is_root()
}

/// Panics, saying how to run the tests, unless we are root.
pub fn require_root() {
    assert!(is_root(), "{NEEDS_ROOT}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_both_ways_out() {
        assert!(NEEDS_ROOT.contains("`cargo xtask test` as root"));
        assert!(NEEDS_ROOT.contains("`cargo test -- --skip privileged`"));
    }
}
