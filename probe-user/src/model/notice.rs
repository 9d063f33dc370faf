//! The notices mailed to the operator, composed from the facts (pure): takeover, recovery,
//! release, conflict, isolation and start; a VIP yielded to another holder, or put back.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::model::events::{HostEvent, Site};

/// One e-mail's worth: a subject and a plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub subject: String,
    pub body: String,
}

/// `outcome` is `Err(reason)` when the VIP could not be added.
pub fn takeover_notice(event: &HostEvent, takeover: &Site, outcome: &Result<(), String>) -> Notice {
    let failed_windows =
        (event.silent_for.as_secs_f64() / event.window_len.as_secs_f64()).round() as u64;
    let when = humantime::format_rfc3339_millis(event.at);
    let what = match outcome {
        Ok(()) => format!(
            "The virtual IP {} was taken over: it is now on {} of {} (label {}).",
            takeover.vip, takeover.iface, takeover.node, takeover.label
        ),
        Err(reason) => format!(
            "Taking over the virtual IP {} on {} of {} FAILED: {reason}",
            takeover.vip, takeover.iface, takeover.node
        ),
    };
    let subject = match outcome {
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

/// The primary is back. `release_in`: when the VIP goes back to it (`None`: not held, or kept).
pub fn recovery_notice(
    event: &HostEvent,
    site: &Site,
    holding: bool,
    release_in: Option<Duration>,
) -> Notice {
    let vip = &site.vip;
    let node = &site.node;
    let what = match (holding, release_in) {
        (false, _) => format!("{node} does not hold the virtual IP {vip}."),
        (true, None) => format!("The virtual IP {vip} stays on {node} (failback: keep)."),
        (true, Some(d)) if d.is_zero() => format!("{node} releases the virtual IP {vip} now."),
        (true, Some(d)) => format!(
            "{node} releases the virtual IP {vip} in {} (hold-down), unless {} fails again.",
            humantime::format_duration(round_ms(d)),
            event.host
        ),
    };
    Notice {
        subject: format!("xdprobe: {} is UP again", event.host),
        body: format!(
            "Host {host} answers again: UP at {when} (window {window}) after {good} good windows.\n{what}\n",
            host = event.host,
            when = humantime::format_rfc3339_millis(event.at),
            window = event.window,
            good = event.change.good_windows,
        ),
    }
}

pub fn release_notice(
    watch: IpAddr,
    site: &Site,
    at: SystemTime,
    announced_for: Option<String>,
) -> Notice {
    let wire = match announced_for {
        Some(mac) => format!("It was announced by gratuitous ARP for the primary's MAC {mac}."),
        None => "No machine answered ARP for it afterwards, so nothing was announced.".to_string(),
    };
    Notice {
        subject: format!("xdprobe: {} gave {} back to {watch}", site.node, site.vip),
        body: format!(
            "{watch} answers again, so {node} removed the virtual IP {vip} from {iface} at {when}.\n{wire}\n",
            node = site.node,
            vip = site.vip,
            iface = site.iface,
            when = humantime::format_rfc3339_millis(at),
        ),
    }
}

/// A cluster event about one group (`elected`, `lost_lease`, `fenced`, `handed_over`), with
/// what it means in a sentence.
pub fn cluster_notice(
    event: &str,
    watch: IpAddr,
    site: &Site,
    at: SystemTime,
    detail: &str,
) -> Notice {
    Notice {
        subject: format!("xdprobe: {} {} for {} ({watch})", site.node, event.replace('_', " "), site.vip),
        body: format!(
            "Cluster event on {node} at {when}, for the virtual IP {vip} (primary {watch}):\n{detail}\n",
            node = site.node,
            when = humantime::format_rfc3339_millis(at),
            vip = site.vip,
        ),
    }
}

pub fn conflict_notice(watch: IpAddr, site: &Site, at: SystemTime, holder: &str) -> Notice {
    Notice {
        subject: format!("xdprobe: {watch} is DOWN but {} is in use by {holder}: not taken", site.vip),
        body: format!(
            "{watch} is DOWN, but at {when} another machine ({holder}) answered ARP for the virtual IP {vip}.\n\
             {node} did not take it, to avoid a duplicate address, and keeps watching.\n",
            when = humantime::format_rfc3339_millis(at),
            vip = site.vip,
            node = site.node,
        ),
    }
}

pub fn isolation_notice(
    watch: IpAddr,
    witnesses: &[IpAddr],
    site: &Site,
    at: SystemTime,
) -> Notice {
    let list: Vec<String> = witnesses.iter().map(ToString::to_string).collect();
    Notice {
        subject: format!("xdprobe: {} is cut off; {} not taken", site.node, site.vip),
        body: format!(
            "{watch} is DOWN, but so is every witness ({list}) at {when}:\n\
             {node} itself is probably cut off from the network, so it did not take {vip}.\n",
            list = list.join(", "),
            when = humantime::format_rfc3339_millis(at),
            node = site.node,
            vip = site.vip,
        ),
    }
}

pub fn start_notice(watch: IpAddr, takeover: &Site, holding: bool) -> Notice {
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

/// We held the VIP and another machine (`holder`) answered for it: we gave it up at once.
/// `keep`: `failback = keep` asked us to keep it, so this is a conflict, not a failback.
pub fn yield_notice(
    watch: impl std::fmt::Display,
    site: &Site,
    at: SystemTime,
    holder: &str,
    keep: bool,
) -> Notice {
    let why = if keep {
        "failback = keep keeps the virtual IP only while nobody else answers for it: two \
         machines answering for one address split its clients at random. Find out why the \
         primary (or another machine) brought the address up."
    } else {
        "This is the failback, early: the hold-down delays giving the address back to a \
         primary that merely answers ping again, not to one that already answers for it."
    };
    Notice {
        subject: format!(
            "xdprobe: {} answered for {} held by {}: given up",
            holder, site.vip, site.node
        ),
        body: format!(
            "At {when} another machine ({holder}) answered ARP for the virtual IP {vip} while \
             {node} held it on {iface} (primary {watch}).\n{node} removed it at once and \
             announced it for {holder}.\n{why}\n",
            when = humantime::format_rfc3339_millis(at),
            vip = site.vip,
            node = site.node,
            iface = site.iface,
        ),
    }
}

/// The VIP we hold was found gone from the interface (removed by another tool or a person, or
/// flushed with the link) and was put back.
pub fn restore_notice(watch: impl std::fmt::Display, site: &Site, at: SystemTime) -> Notice {
    Notice {
        subject: format!(
            "xdprobe: {} was removed from {} and put back",
            site.vip, site.node
        ),
        body: format!(
            "At {when} the virtual IP {vip}, which {node} holds for {watch}, disappeared from \
             {iface} (removed by someone else, or flushed when the link went down).\n\
             {node} added it back (label {label}) and announced it again. Find out what removed \
             it: xdprobe puts it back every time while it holds it.\n",
            when = humantime::format_rfc3339_millis(at),
            vip = site.vip,
            node = site.node,
            iface = site.iface,
            label = site.label,
        ),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::health::{Change, State};

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
            heard_ago: Some(Duration::from_millis(210)),
            window_len: Duration::from_millis(100),
            rtt: None,
        }
    }

    fn site() -> Site {
        Site {
            vip: "192.0.2.100/24".into(),
            iface: "eth0".into(),
            label: "eth0:1".into(),
            node: "standby".into(),
        }
    }

    #[test]
    fn a_cluster_notice_names_the_event_the_node_the_vip_and_what_it_means() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let n = cluster_notice(
            "lost_lease",
            "192.0.2.1".parse().unwrap(),
            &site(),
            at,
            "standby could not renew its etcd lease in time.",
        );
        assert_eq!(
            n.subject,
            "xdprobe: standby lost lease for 192.0.2.100/24 (192.0.2.1)"
        );
        assert!(
            n.body
                .starts_with("Cluster event on standby at 2023-11-14T22:13:20.000Z"),
            "{}",
            n.body
        );
        assert!(
            n.body.contains("192.0.2.100/24 (primary 192.0.2.1)"),
            "{}",
            n.body
        );
        assert!(
            n.body
                .ends_with("could not renew its etcd lease in time.\n"),
            "{}",
            n.body
        );
    }

    #[test]
    fn takeover_notice_says_who_when_how_long_and_what_was_taken() {
        let n = takeover_notice(&down_event(), &site(), &Ok(()));
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
        let n = takeover_notice(&down_event(), &site(), &Err("permission denied".into()));
        assert!(n.subject.contains("FAILED"), "{}", n.subject);
        assert!(n.body.contains("FAILED: permission denied"), "{}", n.body);
    }

    #[test]
    fn start_notice_says_what_will_happen() {
        let n = start_notice("192.0.2.1".parse().unwrap(), &site(), false);
        assert_eq!(n.subject, "xdprobe: standby is watching 192.0.2.1");
        assert!(
            n.body
                .contains("take over 192.0.2.100/24 on eth0 (label eth0:1)"),
            "{}",
            n.body
        );
        let n = start_notice("192.0.2.1".parse().unwrap(), &site(), true);
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
        let n = recovery_notice(&e, &site(), true, None);
        assert_eq!(n.subject, "xdprobe: 192.0.2.1 is UP again");
        assert!(n.body.contains("after 2 good windows"), "{}", n.body);
        assert!(
            n.body.contains("192.0.2.100/24 stays on standby"),
            "{}",
            n.body
        );
        let n = recovery_notice(&e, &site(), true, Some(Duration::from_millis(2500)));
        assert!(
            n.body
                .contains("releases the virtual IP 192.0.2.100/24 in 2s 500ms"),
            "{}",
            n.body
        );
        let n = recovery_notice(&e, &site(), false, None);
        assert!(n.body.contains("does not hold"), "{}", n.body);
    }

    #[test]
    fn restore_notice_says_what_was_put_back_where() {
        let n = restore_notice("192.0.2.1", &site(), SystemTime::UNIX_EPOCH);
        assert!(
            n.subject.contains("192.0.2.100/24 was removed from"),
            "{n:?}"
        );
        assert!(n.body.contains("disappeared from eth0"), "{n:?}");
        assert!(n.body.contains("(label eth0:1)"), "{n:?}");
    }

    #[test]
    fn yield_notice_names_the_holder_and_what_keep_means() {
        let at = SystemTime::UNIX_EPOCH;
        let keep = yield_notice("192.0.2.1", &site(), at, "02:00:00:00:00:01", true);
        assert!(
            keep.subject
                .contains("02:00:00:00:00:01 answered for 192.0.2.100/24"),
            "{keep:?}"
        );
        assert!(keep.body.contains("failback = keep keeps"), "{keep:?}");
        let release = yield_notice("192.0.2.1", &site(), at, "02:00:00:00:00:01", false);
        assert!(release.body.contains("failback, early"), "{release:?}");
    }

    #[test]
    fn release_conflict_and_isolation_notices_name_what_happened() {
        let at = SystemTime::UNIX_EPOCH;
        let primary = "192.0.2.1".parse().unwrap();
        let n = release_notice(primary, &site(), at, Some("02:00:00:00:00:01".into()));
        assert_eq!(
            n.subject,
            "xdprobe: standby gave 192.0.2.100/24 back to 192.0.2.1"
        );
        assert!(n.body.contains("MAC 02:00:00:00:00:01"), "{}", n.body);
        let n = conflict_notice(primary, &site(), at, "02:00:00:00:00:09");
        assert!(
            n.subject.contains("in use by 02:00:00:00:00:09: not taken"),
            "{}",
            n.subject
        );
        let n = isolation_notice(primary, &["192.0.2.254".parse().unwrap()], &site(), at);
        assert_eq!(
            n.subject,
            "xdprobe: standby is cut off; 192.0.2.100/24 not taken"
        );
        assert!(n.body.contains("(192.0.2.254)"), "{}", n.body);
    }
}
