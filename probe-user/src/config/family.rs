//! Which address families a target list may use: `-4`, `-6` or both (the default), as fping
//! has them. Names resolve within the family; an address of the other one is an error.

use std::net::{IpAddr, Ipv6Addr};

use probe_common::host::HostKey;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    Any,
    V4,
    V6,
}

impl Family {
    /// From the `-4` and `-6` flags (clap makes them exclusive).
    pub fn from_flags(ipv4: bool, ipv6: bool) -> Self {
        match (ipv4, ipv6) {
            (true, false) => Family::V4,
            (false, true) => Family::V6,
            _ => Family::Any,
        }
    }

    /// Whether `addr` may be probed.
    pub fn allows(self, addr: IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => addr.is_ipv4(),
            Family::V6 => addr.is_ipv6(),
        }
    }

    /// Why a target of the other family is refused.
    pub fn refusal(self) -> &'static str {
        match self {
            Family::V4 => "an IPv6 target, but only IPv4 was asked for (-4)",
            Family::V6 => "an IPv4 target, but only IPv6 was asked for (-6)",
            Family::Any => "any family is allowed",
        }
    }
}

/// Whether `addr` lies in `::/96` (the unspecified and loopback addresses, the deprecated
/// IPv4-compatible form), below every IPv6 host: where the prober keys IPv4 hosts, so no IPv6
/// host is ever probed there.
pub fn below_host_space(addr: Ipv6Addr) -> bool {
    HostKey::v6(addr.octets()).is_ipv4_space()
}

/// Whether `addr` can be a probed host (a watched primary, a witness, a pool member): unicast,
/// and for IPv6 not [`below_host_space`].
pub fn is_unicast_host(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => !below_host_space(v6) && !v6.is_multicast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_choose_one_family_or_both() {
        assert_eq!(Family::from_flags(false, false), Family::Any);
        assert_eq!(Family::from_flags(true, false), Family::V4);
        assert_eq!(Family::from_flags(false, true), Family::V6);
        let (v4, v6): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        assert!(Family::Any.allows(v4) && Family::Any.allows(v6));
        assert!(Family::V4.allows(v4) && !Family::V4.allows(v6));
        assert!(!Family::V6.allows(v4) && Family::V6.allows(v6));
    }

    #[test]
    fn hosts_are_unicast_and_above_the_ipv4_space() {
        for host in ["192.0.2.1", "2001:db8::1", "fe80::1", "::1:0:0"] {
            assert!(is_unicast_host(host.parse().unwrap()), "{host}");
        }
        for other in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "::1",
            "::192.0.2.1",
            "ff02::1",
        ] {
            assert!(!is_unicast_host(other.parse().unwrap()), "{other}");
        }
    }
}
