//! Does an echo reply count? The one rule, shared by the XDP program, the userspace socket
//! baseline and the tests.
//!
//! In order: is it ours at all ([`ours`]: our identifier and magic, counting on); then, once
//! the caller found the host it comes from and the key of the window it claims, [`judge`]: is
//! it timely, and is it what we sent that very host? A reply that passes is [`Verdict::Fresh`];
//! the caller then sets its answer bit, and counts it only if the bit was clear (a replay
//! finds it set).

use crate::{
    host::HostKey,
    maps::{ProbeConfig, WindowKey, ANSWER_BITS},
    wire::{ProbeHeader, PROBE_MAGIC},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authentic and timely: count it unless it was answered already.
    Fresh,
    /// Our format, but too late to count: past the timeout, its window's key no longer kept,
    /// or so old that its answer bit belongs to a newer probe. Or a sequence not sent yet.
    Stale,
    /// Our format, but not the MAC we sent this host in that window: forged, or another
    /// host's probe sent back from this host's address.
    Forged,
}

/// Whether an echo reply with ICMP identifier `ident` and payload `probe` is an answer to us
/// at all. Anything else passes on untouched.
#[inline(always)]
pub fn ours(ident: u16, probe: &ProbeHeader, config: &ProbeConfig) -> bool {
    config.enabled != 0 && u32::from(ident) == config.ident && probe.magic() == PROBE_MAGIC
}

/// The verdict on one of our replies from monitored `host`, received at `now_ns`,
/// given what the key ring holds at the slot of its window.
#[inline(always)]
pub fn judge(
    ident: u16,
    probe: &ProbeHeader,
    config: &ProbeConfig,
    host: HostKey,
    key: &WindowKey,
    now_ns: u64,
) -> Verdict {
    let age = now_ns.saturating_sub(probe.sent_ns());
    let behind = config.seq_max.wrapping_sub(probe.seq());
    if age > config.timeout_ns || behind >= ANSWER_BITS {
        return Verdict::Stale;
    }
    if key.valid == 0 || key.window != probe.window() {
        return Verdict::Stale;
    }
    if !probe.is_authentic(&key.key, host, ident) {
        return Verdict::Forged;
    }
    Verdict::Fresh
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::Key;

    const IDENT: u16 = 0x1234;
    const PRIMARY: HostKey = HostKey::v4(0xc000_0201);
    const WITNESS: HostKey = HostKey::v4(0xc000_02fe);
    const KEY: Key = Key {
        k0: 0x1111,
        k1: 0x2222,
    };
    const WINDOW: u32 = 10;
    const SENT: u64 = 5_000_000_000;

    const CONFIG: ProbeConfig = ProbeConfig {
        ident: IDENT as u32,
        enabled: 1,
        seq_max: 100,
        generation: 0,
        hosts: 2,
        half: 2,
        timeout_ns: 1_000_000_000,
    };

    fn key() -> WindowKey {
        WindowKey {
            window: WINDOW,
            valid: 1,
            key: KEY,
        }
    }

    fn probe(dst: HostKey, seq: u32) -> ProbeHeader {
        ProbeHeader::signed(&KEY, dst, IDENT, WINDOW, seq, SENT)
    }

    fn verdict(host: HostKey, probe: &ProbeHeader, now: u64) -> Verdict {
        judge(IDENT, probe, &CONFIG, host, &key(), now)
    }

    #[test]
    fn the_reply_to_this_hosts_probe_is_fresh() {
        let p = probe(PRIMARY, 100);
        assert!(ours(IDENT, &p, &CONFIG));
        assert_eq!(verdict(PRIMARY, &p, SENT + 300_000), Verdict::Fresh);
    }

    #[test]
    fn another_hosts_probe_sent_back_from_this_address_is_forged() {
        // The witness received its own probe and sends it back as if from the primary.
        let stolen = probe(WITNESS, 100);
        assert_eq!(verdict(PRIMARY, &stolen, SENT + 1), Verdict::Forged);
        assert_eq!(verdict(WITNESS, &stolen, SENT + 1), Verdict::Fresh);
    }

    #[test]
    fn a_changed_field_breaks_the_mac() {
        let mut bytes = probe(PRIMARY, 99).to_bytes();
        bytes[11] ^= 1; // seq 99 -> 98
        let edited = ProbeHeader::from_bytes(bytes);
        assert_eq!(edited.seq(), 98);
        assert_eq!(verdict(PRIMARY, &edited, SENT + 1), Verdict::Forged);
    }

    #[test]
    fn other_identifiers_magic_or_a_disabled_config_are_not_ours() {
        let p = probe(PRIMARY, 100);
        assert!(!ours(IDENT + 1, &p, &CONFIG));
        let mut bytes = p.to_bytes();
        bytes[0] ^= 0xff;
        assert!(!ours(IDENT, &ProbeHeader::from_bytes(bytes), &CONFIG));
        let off = ProbeConfig {
            enabled: 0,
            ..CONFIG
        };
        assert!(!ours(IDENT, &p, &off));
    }

    #[test]
    fn late_replies_count_until_the_timeout_and_not_after() {
        let p = probe(PRIMARY, 100);
        assert_eq!(verdict(PRIMARY, &p, SENT + 1_000_000_000), Verdict::Fresh);
        assert_eq!(verdict(PRIMARY, &p, SENT + 1_000_000_001), Verdict::Stale);
        // A send time in the future (a clock we cannot forge: it is under the MAC) is age 0.
        assert_eq!(verdict(PRIMARY, &p, SENT - 5), Verdict::Fresh);
    }

    #[test]
    fn sequences_outside_the_last_64_are_stale() {
        for (seq, expected) in [
            (100, Verdict::Fresh),
            (37, Verdict::Fresh),
            (36, Verdict::Stale),
            (101, Verdict::Stale),
        ] {
            assert_eq!(
                verdict(PRIMARY, &probe(PRIMARY, seq), SENT),
                expected,
                "{seq}"
            );
        }
        // Across the wrap of the sequence counter.
        let config = ProbeConfig {
            seq_max: 5,
            ..CONFIG
        };
        let wrapped = probe(PRIMARY, u32::MAX - 3);
        assert_eq!(
            judge(IDENT, &wrapped, &config, PRIMARY, &key(), SENT),
            Verdict::Fresh
        );
    }

    #[test]
    fn a_window_whose_key_is_gone_or_never_written_is_stale() {
        let p = probe(PRIMARY, 100);
        let newer = WindowKey {
            window: WINDOW + 64,
            ..key()
        };
        assert_eq!(
            judge(IDENT, &p, &CONFIG, PRIMARY, &newer, SENT),
            Verdict::Stale
        );
        let empty = WindowKey::default();
        assert_eq!(
            judge(IDENT, &p, &CONFIG, PRIMARY, &empty, SENT),
            Verdict::Stale
        );
    }
}
