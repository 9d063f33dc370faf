//! Which address families a target list may use: `-4`, `-6` or both (the default), as fping
//! has them. Names resolve within the family; an address of the other one is an error.

use std::net::IpAddr;

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
}
