//! The capabilities xdprobe needs, checked up front so that a missing one is named instead of
//! surfacing as a bare "Operation not permitted" from deep inside BPF or netlink.

use std::fmt;

/// What each capability is for.
pub const NEEDED: [(u32, &str, &str); 4] = [
    (39, "CAP_BPF", "load the XDP program and create its maps"),
    (
        38,
        "CAP_PERFMON",
        "let the verifier accept the program's pointer arithmetic",
    ),
    (12, "CAP_NET_ADMIN", "attach XDP and add or remove the VIP"),
    (13, "CAP_NET_RAW", "send probes and ARP from raw sockets"),
];

/// Capabilities missing from an effective set.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing(pub Vec<&'static str>);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why: Vec<String> = NEEDED
            .iter()
            .filter(|(_, name, _)| self.0.contains(name))
            .map(|(_, name, why)| format!("{name} (to {why})"))
            .collect();
        write!(
            f,
            "missing capabilit{} {}; run as root or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN \
             and CAP_NET_RAW (e.g. AmbientCapabilities in the systemd unit)",
            if self.0.len() == 1 { "y" } else { "ies" },
            why.join(", ")
        )
    }
}

/// The needed capabilities absent from `CapEff` in a `/proc/PID/status` text.
pub fn missing(status: &str) -> Result<(), Missing> {
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&'static str> = NEEDED
        .iter()
        .filter(|(bit, _, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name, _)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Missing(missing))
    }
}

/// Checks this process.
pub fn check() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    missing(&status).map_err(|m| anyhow::anyhow!("{m}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert_eq!(missing("Name:\tx\nCapEff:\t000001ffffffffff\n"), Ok(()));
    }

    #[test]
    fn each_missing_capability_is_named_with_its_purpose() {
        // BPF, PERFMON, NET_ADMIN: bits 39, 38, 12; NET_RAW (13) missing.
        let eff = (1u64 << 39) | (1 << 38) | (1 << 12);
        let err = missing(&format!("CapEff:\t{eff:016x}\n")).unwrap_err();
        assert_eq!(err, Missing(vec!["CAP_NET_RAW"]));
        let text = err.to_string();
        assert!(
            text.starts_with("missing capability CAP_NET_RAW (to send probes"),
            "{text}"
        );
        let none = missing("CapEff:\t0000000000000000\n").unwrap_err();
        assert_eq!(
            none.0,
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW"]
        );
        assert!(none.to_string().starts_with("missing capabilities CAP_BPF"));
    }
}
