//! What the prober tells the rest of the daemon, and the notices composed from it (pure).

use std::{
    net::Ipv4Addr,
    time::{Duration, SystemTime},
};

use crate::{health::Change, mail::Notice};

/// A host changed state at the end of a probe round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostEvent {
    pub host: Ipv4Addr,
    pub change: Change,
    /// The window the deciding round belonged to.
    pub window: u32,
    /// Wall-clock time of the decision.
    pub at: SystemTime,
    /// How long the host had been silent when declared DOWN (zero otherwise).
    pub silent_for: Duration,
    /// Length of a window, for the notice.
    pub window_len: Duration,
}

/// Facts about a takeover attempt, for the notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    pub vip: String,
    pub iface: String,
    pub label: String,
    pub node: String,
    /// `Err(reason)` when the VIP could not be added.
    pub outcome: Result<(), String>,
}

pub fn takeover_notice(event: &HostEvent, takeover: &Takeover) -> Notice {
    let failed_windows =
        (event.silent_for.as_secs_f64() / event.window_len.as_secs_f64()).round() as u64;
    let when = humantime::format_rfc3339_millis(event.at);
    let what = match &takeover.outcome {
        Ok(()) => format!(
            "The virtual IP {} was taken over: it is now on {} of {} (label {}).",
            takeover.vip, takeover.iface, takeover.node, takeover.label
        ),
        Err(reason) => format!(
            "Taking over the virtual IP {} on {} of {} FAILED: {reason}",
            takeover.vip, takeover.iface, takeover.node
        ),
    };
    let subject = match &takeover.outcome {
        Ok(()) => format!(
            "xdprobe: {} is DOWN, {} taken over by {}",
            event.host, takeover.vip, takeover.node
        ),
        Err(_) => format!(
            "xdprobe: {} is DOWN, takeover of {} FAILED",
            event.host, takeover.vip
        ),
    };
    let body = format!(
        "Host {host} stopped answering and was declared DOWN at {when} (window {window}),\n\
         after {failed_windows} failed windows of {len} ({rounds} probes in a row unanswered, \
         silent for {silent}).\n\n{what}\n",
        host = event.host,
        window = event.window,
        len = humantime::format_duration(event.window_len),
        rounds = event.change.silent_rounds,
        silent = humantime::format_duration(round_ms(event.silent_for)),
    );
    Notice { subject, body }
}

pub fn recovery_notice(event: &HostEvent, vip: &str, node: &str) -> Notice {
    Notice {
        subject: format!("xdprobe: {} is UP again", event.host),
        body: format!(
            "Host {host} answers again: UP at {when} (window {window}) after {good} good windows.\n\
             The virtual IP {vip} stays on {node}.\n",
            host = event.host,
            when = humantime::format_rfc3339_millis(event.at),
            window = event.window,
            good = event.change.good_windows,
        ),
    }
}

pub fn start_notice(watch: Ipv4Addr, takeover: &Takeover, holding: bool) -> Notice {
    let now = if holding {
        format!("It already holds {} and keeps it.", takeover.vip)
    } else {
        format!(
            "When {watch} goes DOWN it will take over {} on {} (label {}).",
            takeover.vip, takeover.iface, takeover.label
        )
    };
    Notice {
        subject: format!("xdprobe: {} is watching {watch}", takeover.node),
        body: format!(
            "xdprobe on {} started watching {watch}.\n{now}\n",
            takeover.node
        ),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::State;

    fn down_event() -> HostEvent {
        HostEvent {
            host: "192.0.2.1".parse().unwrap(),
            change: Change {
                from: State::Up,
                to: State::Down,
                silent_rounds: 6,
                good_windows: 0,
            },
            window: 42,
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            silent_for: Duration::from_millis(200),
            window_len: Duration::from_millis(100),
        }
    }

    fn takeover(outcome: Result<(), String>) -> Takeover {
        Takeover {
            vip: "192.0.2.100/24".into(),
            iface: "eth0".into(),
            label: "eth0:1".into(),
            node: "standby".into(),
            outcome,
        }
    }

    #[test]
    fn takeover_notice_says_who_when_how_long_and_what_was_taken() {
        let n = takeover_notice(&down_event(), &takeover(Ok(())));
        assert_eq!(
            n.subject,
            "xdprobe: 192.0.2.1 is DOWN, 192.0.2.100/24 taken over by standby"
        );
        for needle in [
            "Host 192.0.2.1",
            "2023-11-14T22:13:20.123Z",
            "window 42",
            "after 2 failed windows of 100ms",
            "6 probes in a row",
            "192.0.2.100/24",
            "eth0",
            "eth0:1",
        ] {
            assert!(
                n.body.contains(needle),
                "missing {needle:?} in:\n{}",
                n.body
            );
        }
    }

    #[test]
    fn a_failed_takeover_is_reported_as_such() {
        let n = takeover_notice(&down_event(), &takeover(Err("permission denied".into())));
        assert!(n.subject.contains("FAILED"), "{}", n.subject);
        assert!(n.body.contains("FAILED: permission denied"), "{}", n.body);
    }

    #[test]
    fn start_notice_says_what_will_happen() {
        let n = start_notice("192.0.2.1".parse().unwrap(), &takeover(Ok(())), false);
        assert_eq!(n.subject, "xdprobe: standby is watching 192.0.2.1");
        assert!(
            n.body
                .contains("take over 192.0.2.100/24 on eth0 (label eth0:1)"),
            "{}",
            n.body
        );
        let n = start_notice("192.0.2.1".parse().unwrap(), &takeover(Ok(())), true);
        assert!(
            n.body.contains("already holds 192.0.2.100/24"),
            "{}",
            n.body
        );
    }

    #[test]
    fn recovery_notice_names_the_host_and_where_the_vip_stays() {
        let mut e = down_event();
        e.change = Change {
            from: State::Down,
            to: State::Up,
            silent_rounds: 0,
            good_windows: 2,
        };
        let n = recovery_notice(&e, "192.0.2.100/24", "standby");
        assert_eq!(n.subject, "xdprobe: 192.0.2.1 is UP again");
        assert!(n.body.contains("after 2 good windows"), "{}", n.body);
        assert!(
            n.body.contains("192.0.2.100/24 stays on standby"),
            "{}",
            n.body
        );
    }
}
