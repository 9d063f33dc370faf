//! Does an echo reply count? The one rule, shared by the XDP program and the tests.

use crate::{maps::ProbeConfig, wire::ProbeHeader, wire::PROBE_MAGIC};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A reply to one of this window's probes: count it.
    Count,
    /// Not an answer to us (other identifier, no magic, or we are not probing yet): pass it on.
    NotOurs,
    /// Our probe format from another window: too late, or replayed.
    StaleWindow,
    /// This window, but without this window's cookie: forged.
    WrongCookie,
}

/// Judges an echo reply with ICMP identifier `ident` and payload `probe` against `config`.
#[inline(always)]
pub fn judge(ident: u16, probe: &ProbeHeader, config: &ProbeConfig) -> Verdict {
    if config.enabled == 0 || u32::from(ident) != config.ident || probe.magic() != PROBE_MAGIC {
        return Verdict::NotOurs;
    }
    if probe.window() != config.window {
        return Verdict::StaleWindow;
    }
    if probe.cookie() != config.cookie {
        return Verdict::WrongCookie;
    }
    Verdict::Count
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: ProbeConfig = ProbeConfig {
        ident: 0x1234,
        window: 10,
        cookie: 0xfeed_f00d,
        enabled: 1,
        hosts: 1,
    };

    #[test]
    fn this_windows_reply_counts() {
        let probe = ProbeHeader::new(10, 0xfeed_f00d, 0, 1);
        assert_eq!(judge(0x1234, &probe, &CONFIG), Verdict::Count);
    }

    #[test]
    fn another_identifier_is_not_ours() {
        let probe = ProbeHeader::new(10, 0xfeed_f00d, 0, 1);
        assert_eq!(judge(0x1235, &probe, &CONFIG), Verdict::NotOurs);
    }

    #[test]
    fn missing_magic_is_not_ours() {
        let mut bytes = ProbeHeader::new(10, 0xfeed_f00d, 0, 1).to_bytes();
        bytes[0] ^= 0xff;
        let other = ProbeHeader::from_bytes(bytes);
        assert_eq!(judge(0x1234, &other, &CONFIG), Verdict::NotOurs);
    }

    #[test]
    fn disabled_config_counts_nothing() {
        let probe = ProbeHeader::new(0, 0, 0, 1);
        let config = ProbeConfig {
            enabled: 0,
            ..CONFIG
        };
        assert_eq!(judge(0x1234, &probe, &config), Verdict::NotOurs);
    }

    #[test]
    fn previous_window_is_stale_even_with_its_valid_cookie() {
        let probe = ProbeHeader::new(9, 0xfeed_f00d, 0, 1);
        assert_eq!(judge(0x1234, &probe, &CONFIG), Verdict::StaleWindow);
    }

    #[test]
    fn wrong_cookie_is_forged() {
        let probe = ProbeHeader::new(10, 0xfeed_f00e, 0, 1);
        assert_eq!(judge(0x1234, &probe, &CONFIG), Verdict::WrongCookie);
    }
}
