//! A monitored host's address as the XDP program keys it: 128 bits in two big-endian halves,
//! ordered like the addresses themselves, the same for IPv4 and IPv6.
//!
//! An IPv4 address `a.b.c.d` is `::a.b.c.d` (the high half zero, the low half the address), so
//! IPv4 hosts sort before every IPv6 host, as `std::net::IpAddr` orders them. IPv6 addresses
//! inside `::/96` (the unspecified address, loopback and the deprecated IPv4-compatible form)
//! would collide with them: no such address is ever a host ([`HostKey::is_ipv4_space`]), and
//! the program ignores IPv6 replies from there.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostKey {
    /// The first 8 bytes of the address, big-endian (zero for IPv4).
    pub hi: u64,
    /// The last 8 bytes, big-endian (the IPv4 address in its low 32 bits).
    pub lo: u64,
}

impl HostKey {
    pub const LEN: usize = core::mem::size_of::<HostKey>();

    /// The key of an IPv4 address (host order).
    #[inline(always)]
    pub const fn v4(addr: u32) -> Self {
        Self {
            hi: 0,
            lo: addr as u64,
        }
    }

    /// The key of an IPv6 address from its 16 octets.
    #[inline(always)]
    pub const fn v6(octets: [u8; 16]) -> Self {
        let mut hi = [0u8; 8];
        let mut lo = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            hi[i] = octets[i];
            lo[i] = octets[i + 8];
            i += 1;
        }
        Self {
            hi: u64::from_be_bytes(hi),
            lo: u64::from_be_bytes(lo),
        }
    }

    /// Whether this key lies where IPv4 keys live (`::/96`): true of every IPv4 key, and of
    /// IPv6 addresses that are never hosts.
    #[inline(always)]
    pub const fn is_ipv4_space(&self) -> bool {
        self.hi == 0 && self.lo >> 32 == 0
    }
}

impl From<core::net::IpAddr> for HostKey {
    fn from(addr: core::net::IpAddr) -> Self {
        match addr {
            core::net::IpAddr::V4(v4) => Self::v4(u32::from(v4)),
            core::net::IpAddr::V6(v6) => Self::v6(v6.octets()),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    fn key(addr: IpAddr) -> HostKey {
        HostKey::from(addr)
    }

    #[test]
    fn keys_sort_like_addresses_ipv4_first() {
        let addrs: [IpAddr; 7] = [
            Ipv4Addr::new(0, 0, 0, 1).into(),
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Ipv4Addr::new(255, 255, 255, 255).into(),
            "::1:0:0".parse::<Ipv6Addr>().unwrap().into(),
            "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().into(),
            "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
            "2001:db8:0:1::".parse::<Ipv6Addr>().unwrap().into(),
        ];
        for pair in addrs.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(key(pair[0]) < key(pair[1]), "{} {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn ipv6_halves_are_big_endian() {
        let k = key("2001:db8::1:2".parse::<Ipv6Addr>().unwrap().into());
        assert_eq!(k.hi, 0x2001_0db8_0000_0000);
        assert_eq!(k.lo, 0x0000_0000_0001_0002);
        assert!(!k.is_ipv4_space());
    }

    #[test]
    fn only_ipv4_and_the_bottom_of_ipv6_are_ipv4_space() {
        assert!(key(Ipv4Addr::new(192, 0, 2, 1).into()).is_ipv4_space());
        assert!(key(Ipv6Addr::LOCALHOST.into()).is_ipv4_space());
        assert!(key("::192.0.2.1".parse::<Ipv6Addr>().unwrap().into()).is_ipv4_space());
        assert!(!key("::1:0:0".parse::<Ipv6Addr>().unwrap().into()).is_ipv4_space());
        assert!(!key("::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().into()).is_ipv4_space());
    }
}
