//! Which cluster nodes probe which monitored target: rendezvous (highest random weight)
//! hashing over the live members. Every node computes the same answer from the same member
//! list, and a member that leaves or joins moves only the targets it owned or wins.
//!
//! The weight is SipHash-2-4 (probe-common's, the probe authenticator's function) under a
//! fixed public key over the node name and the target's 128-bit key: stable across builds,
//! machines and releases, unlike `std`'s hasher.

use std::net::IpAddr;

use probe_common::{
    host::HostKey,
    mac::{siphash24, Key},
};

/// A fixed key: the weights must be the same on every node, not secret.
const KEY: Key = Key {
    k0: 0x7864_7072_6f62_6531,
    k1: 0x7368_6172_6469_6e67,
};
/// Node names are at most 64 bytes: 8 words.
const NAME_WORDS: usize = 8;

/// The weight of `node` for `target`.
fn weight(node: &str, target: HostKey) -> u64 {
    let mut m = [0u64; NAME_WORDS + 3];
    for (i, chunk) in node.as_bytes().chunks(8).take(NAME_WORDS).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        m[i] = u64::from_le_bytes(word);
    }
    m[NAME_WORDS] = node.len() as u64;
    m[NAME_WORDS + 1] = target.hi;
    m[NAME_WORDS + 2] = target.lo;
    siphash24(&KEY, m)
}

/// The `replicas` members (at most all of them) that probe `target`, best first.
pub fn owners(target: IpAddr, members: &[String], replicas: usize) -> Vec<&str> {
    let key = HostKey::from(target);
    let mut weighed: Vec<(u64, &str)> = members
        .iter()
        .map(|m| (weight(m, key), m.as_str()))
        .collect();
    // Ties (never seen in practice) are broken by name, so every node still agrees.
    weighed.sort_unstable_by(|a, b| b.cmp(a));
    weighed.into_iter().take(replicas).map(|(_, m)| m).collect()
}

/// The targets among `targets` that `node` probes, given the live `members` (which include
/// it). A node not among the members probes nothing.
pub fn share(node: &str, targets: &[IpAddr], members: &[String], replicas: usize) -> Vec<IpAddr> {
    targets
        .iter()
        .copied()
        .filter(|t| owners(*t, members, replicas).contains(&node))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn slash24() -> Vec<IpAddr> {
        (1..=254)
            .map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)))
            .collect()
    }

    #[test]
    fn every_target_has_exactly_its_replicas_and_shares_are_even() {
        let members = nodes(&["n1", "n2", "n3"]);
        let targets = slash24();
        for replicas in [1, 2] {
            let shares: Vec<Vec<IpAddr>> = members
                .iter()
                .map(|n| share(n, &targets, &members, replicas))
                .collect();
            for t in &targets {
                let probers = shares.iter().filter(|s| s.contains(t)).count();
                assert_eq!(probers, replicas, "{t}");
            }
            let expected = targets.len() * replicas / members.len();
            for s in &shares {
                // Within a third of an even split (254 targets: 85 ± 28 for one replica).
                assert!(
                    s.len().abs_diff(expected) < expected / 3,
                    "{} of {} targets",
                    s.len(),
                    targets.len()
                );
            }
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_targets() {
        let all = nodes(&["n1", "n2", "n3"]);
        let left = nodes(&["n1", "n3"]);
        for t in slash24() {
            let before = owners(t, &all, 1)[0];
            let after = owners(t, &left, 1)[0];
            if before != "n2" {
                assert_eq!(before, after, "{t} moved although its owner stayed");
            }
        }
        // And it comes back to the same targets when it rejoins.
        let t = slash24();
        let with_n2: Vec<_> = share("n2", &t, &all, 1);
        assert_eq!(share("n2", &t, &all, 1), with_n2);
        assert!(share("n2", &t, &left, 1).is_empty(), "not a member");
    }

    #[test]
    fn the_order_of_the_member_list_does_not_matter_and_weights_are_stable() {
        let t: IpAddr = "2001:db8::7".parse().unwrap();
        let (abcd, dcba) = (nodes(&["a", "b", "c", "d"]), nodes(&["d", "c", "b", "a"]));
        assert_eq!(owners(t, &abcd, 2), owners(t, &dcba, 2));
        assert_eq!(owners(t, &nodes(&["a"]), 2), ["a"], "at most the members");
        // Pinned: a change of the weight function would split nodes of two releases.
        let one: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(weight("n1", HostKey::from(one)), 0x0d41_102c_2370_0d34);
        assert_ne!(
            weight("n1", HostKey::from(t)),
            weight("n2", HostKey::from(t))
        );
    }
}
