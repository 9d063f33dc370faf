//! A group's virtual IPs: one address with its prefix, IPv4 or IPv6, or one of each moved
//! together (`vip = ["192.0.2.100/24", "2001:db8::100/64"]`, `--vip 192.0.2.100/24,2001:db8::100/64`).
//! Pure parsing and checks.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{de, Deserialize, Deserializer};

/// At most one IPv4 and one IPv6 address, at least one; in the order given.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Vips(Vec<IpNet>);

impl Vips {
    /// Checks `nets`: one or two, not two of one family, each a unicast address.
    pub fn new(nets: Vec<IpNet>) -> Result<Self, String> {
        match nets.as_slice() {
            [] => return Err("no address given".into()),
            [a, b] if a.addr().is_ipv4() == b.addr().is_ipv4() => {
                return Err(format!(
                    "{a} and {b}: at most one IPv4 and one IPv6 address"
                ))
            }
            [_, _, _, ..] => {
                return Err("at most two addresses (one IPv4, one IPv6)".into());
            }
            _ => {}
        }
        if let Some(bad) = nets.iter().find(|n| !unicast(n.addr())) {
            return Err(format!("{} is not a unicast address", bad.addr()));
        }
        Ok(Self(nets))
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }

    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.0.iter().map(IpNet::addr)
    }

    pub fn v4(&self) -> Option<Ipv4Net> {
        self.0.iter().find_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
    }

    pub fn v6(&self) -> Option<Ipv6Net> {
        self.0.iter().find_map(|n| match n {
            IpNet::V6(n) => Some(*n),
            IpNet::V4(_) => None,
        })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.addrs().any(|a| a == addr)
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Vips) -> bool {
        self.addrs().any(|a| other.contains(a))
    }
}

fn unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_multicast()
                || a.is_loopback()
                || a.to_ipv4_mapped().is_some())
        }
    }
}

impl From<Ipv4Net> for Vips {
    fn from(net: Ipv4Net) -> Self {
        Self(vec![IpNet::V4(net)])
    }
}

/// `192.0.2.100/24`, or `192.0.2.100/24,2001:db8::100/64`: what `/status`, `/metrics`, the
/// hooks and the mails call the group's VIP.
impl fmt::Display for Vips {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// `ADDR/PREFIX[,ADDR/PREFIX]`.
impl FromStr for Vips {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let nets = s
            .split(',')
            .map(|part| parse_net(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(nets)
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>().map_err(|_| {
        if s.parse::<Ipv4Addr>().is_ok() || s.parse::<Ipv6Addr>().is_ok() {
            format!("{s:?} has no prefix length (ADDR/PREFIX, e.g. 192.0.2.100/24)")
        } else {
            format!("{s:?} is not an address with its prefix length (ADDR/PREFIX)")
        }
    })
}

/// A string (`"192.0.2.100/24"`) or a list of them (`["192.0.2.100/24", "2001:db8::100/64"]`).
impl<'de> Deserialize<'de> for Vips {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Vips;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address with its prefix length, or a list of one IPv4 and one IPv6")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Vips, E> {
                s.parse().map_err(E::custom)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vips, A::Error> {
                let mut nets = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    nets.push(parse_net(&s).map_err(de::Error::custom)?);
                }
                Vips::new(nets).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_of_either_family_or_one_of_each() {
        let v4: Vips = "192.0.2.100/24".parse().unwrap();
        assert_eq!(v4.to_string(), "192.0.2.100/24");
        assert_eq!(v4.v6(), None);
        let v6: Vips = "2001:db8::100/64".parse().unwrap();
        assert_eq!(v6.v6().map(|n| n.addr()), "2001:db8::100".parse().ok());
        let both: Vips = "192.0.2.100/24, 2001:db8::100/64".parse().unwrap();
        assert_eq!(both.to_string(), "192.0.2.100/24,2001:db8::100/64");
        assert!(both.contains("2001:db8::100".parse().unwrap()));
        assert!(both.overlaps(&v4) && !v4.overlaps(&v6));
    }

    #[test]
    fn bad_lists_and_addresses_are_refused_saying_why() {
        for (text, why) in [
            (
                "192.0.2.100/24,192.0.2.101/24",
                "at most one IPv4 and one IPv6",
            ),
            (
                "2001:db8::1/64,2001:db8::2/64",
                "at most one IPv4 and one IPv6",
            ),
            ("192.0.2.100", "no prefix length"),
            ("2001:db8::100", "no prefix length"),
            ("vip/24", "not an address"),
            ("ff02::1/64", "not a unicast address"),
            ("::/64", "not a unicast address"),
            ("::ffff:192.0.2.1/120", "not a unicast address"),
            ("224.0.0.1/24", "not a unicast address"),
        ] {
            let err = text.parse::<Vips>().unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert!(Vips::new(vec![]).is_err());
    }

    #[derive(Debug, Deserialize)]
    struct Doc {
        vip: Vips,
    }

    #[test]
    fn the_config_takes_a_string_or_a_list() {
        let one: Doc = toml::from_str("vip = \"2001:db8::100/64\"").unwrap();
        assert_eq!(one.vip.to_string(), "2001:db8::100/64");
        let two: Doc = toml::from_str("vip = [\"192.0.2.100/24\", \"2001:db8::100/64\"]").unwrap();
        assert_eq!(two.vip.nets().len(), 2);
        let err = toml::from_str::<Doc>("vip = [\"192.0.2.100/24\", \"192.0.2.101/24\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most one IPv4 and one IPv6"), "{err}");
        let err = toml::from_str::<Doc>("vip = 7").unwrap_err().to_string();
        assert!(err.contains("an address with its prefix length"), "{err}");
    }
}
