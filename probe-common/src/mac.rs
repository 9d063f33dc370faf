//! The probe's authenticator: SipHash-2-4 with a per-window 128-bit key over the facts a reply
//! must match (the host it was sent to, our identifier, the window, the probe's sequence and
//! its send time).
//!
//! Written for a fixed number of 8-byte words (a const generic), so the XDP program runs it as
//! straight-line code, and so the kernel and userspace compute the very same function. The tests check it
//! against the reference vectors and against the `siphasher` crate.

use crate::host::HostKey;

/// A SipHash key. Each window gets a fresh random one, which never leaves this machine (it is
/// only in our memory and in the kernel's map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Key {
    pub k0: u64,
    pub k1: u64,
}

#[inline(always)]
fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    sipround(v);
    sipround(v);
    v[0] ^= m;
}

/// SipHash-2-4 of the 24-byte message made of `m`'s words, each read little-endian (as the
/// reference reads 8-byte blocks).
/// SipHash-2-4 of the `8 * N` bytes whose little-endian words are `m`.
#[inline(always)]
pub fn siphash24<const N: usize>(key: &Key, m: [u64; N]) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f_6d65_7073_6575,
        key.k1 ^ 0x646f_7261_6e64_6f6d,
        key.k0 ^ 0x6c79_6765_6e65_7261,
        key.k1 ^ 0x7465_6462_7974_6573,
    ];
    for word in m {
        compress(&mut v, word);
    }
    compress(&mut v, ((8 * N) as u64 & 0xff) << 56);
    v[2] ^= 0xff;
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The MAC a probe carries: over the host it goes to (its full 128-bit key, so an IPv4 and an
/// IPv6 host never share one), our identifier, its window, its sequence and its send time.
#[inline(always)]
pub fn probe_mac(key: &Key, dst: HostKey, ident: u16, window: u32, seq: u32, sent_ns: u64) -> u64 {
    siphash24(
        key,
        [
            dst.hi,
            dst.lo,
            u64::from(ident),
            (u64::from(window) << 32) | u64::from(seq),
            sent_ns,
        ],
    )
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::hash::Hasher as _;

    use super::*;

    /// The reference key 00 01 .. 0f.
    const REFERENCE_KEY: Key = Key {
        k0: 0x0706_0504_0302_0100,
        k1: 0x0f0e_0d0c_0b0a_0908,
    };

    fn words(bytes: &[u8; 24]) -> [u64; 3] {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        [word(0), word(1), word(2)]
    }

    #[test]
    fn matches_the_reference_vector_for_24_bytes() {
        // SipHash-2-4 test vector 24 (message 00 01 .. 17) of the reference implementation,
        // vectors.h, as bytes.
        let expected = u64::from_le_bytes([0x94, 0xaf, 0x49, 0xf6, 0xc6, 0x50, 0xad, 0xb8]);
        let message: [u8; 24] = core::array::from_fn(|i| i as u8);
        assert_eq!(siphash24(&REFERENCE_KEY, words(&message)), expected);
    }

    #[test]
    fn matches_the_siphasher_crate_on_many_inputs() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..1000 {
            let key = Key {
                k0: next(),
                k1: next(),
            };
            let m = [next(), next(), next()];
            let mut bytes = [0u8; 24];
            for (i, w) in m.iter().enumerate() {
                bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
            }
            let mut reference = siphasher::sip::SipHasher24::new_with_keys(key.k0, key.k1);
            reference.write(&bytes);
            assert_eq!(siphash24(&key, m), reference.finish());
        }
    }

    #[test]
    fn matches_the_siphasher_crate_for_the_probe_macs_40_bytes() {
        let key = Key { k0: 5, k1: 6 };
        let m = [1u64, 2, 3, 4, 5];
        let mut bytes = [0u8; 40];
        for (i, w) in m.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let mut reference = siphasher::sip::SipHasher24::new_with_keys(key.k0, key.k1);
        reference.write(&bytes);
        assert_eq!(siphash24(&key, m), reference.finish());
    }

    #[test]
    fn every_fact_changes_the_mac() {
        let key = Key { k0: 1, k1: 2 };
        let host = HostKey::v4(0xc000_0201);
        let base = probe_mac(&key, host, 7, 10, 20, 30);
        let v6 = HostKey {
            hi: 0x2001_0db8_0000_0000,
            lo: 0xc000_0201,
        };
        for other in [
            probe_mac(&key, HostKey::v4(0xc000_0202), 7, 10, 20, 30),
            probe_mac(&key, v6, 7, 10, 20, 30),
            probe_mac(&key, host, 8, 10, 20, 30),
            probe_mac(&key, host, 7, 11, 20, 30),
            probe_mac(&key, host, 7, 10, 21, 30),
            probe_mac(&key, host, 7, 10, 20, 31),
            probe_mac(&Key { k0: 1, k1: 3 }, host, 7, 10, 20, 30),
        ] {
            assert_ne!(base, other);
        }
    }
}
