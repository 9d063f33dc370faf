//! A lab of far hosts: hosts that answer ping after a delay of their own, for the tests of
//! probing across long round trips (this kernel has no netem to delay packets with).
//!
//! A prober namespace and a farm namespace joined by one veth pair: the prober is
//! 192.0.2.1/24 on `eth0`, the farm 192.0.2.2/24. The farm holds all of 198.51.100.0/24 (a
//! `local` route on its `lo`) and the prober routes it via 192.0.2.2. The farm's kernel answers
//! no ping (`icmp_echo_ignore_all`); a [`Responder`] in it answers for each far host after that
//! host's delay, and every other address of the /24 stays silent, like a dead host.
//!
//! [`ping`] runs iputils `ping` in a namespace and reads its figures, to check the lab itself.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{bail, Context as _};

use crate::{
    lab::Lab,
    responder::{Responder, Tally},
};

/// The prober's host name in the lab (its namespace is [`FarLab::ns`] of it).
pub const PROBER: &str = "prober";
/// The farm's host name.
pub const FARM: &str = "farm";
/// The prober's address on its `eth0`.
pub const PROBER_ADDR: &str = "192.0.2.1";
/// The farm's address on its `eth0`: the prober's route to the far hosts.
pub const FARM_ADDR: &str = "192.0.2.2";
/// Where the far hosts are (TEST-NET-2), all of it held by the farm.
pub const FAR_NET: &str = "198.51.100.0/24";

/// A far host: its address and how long it takes to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FarHost {
    pub addr: Ipv4Addr,
    pub delay: Duration,
}

/// Far hosts 198.51.100.1, .2, ... answering after `delays`, in that order.
pub fn far_hosts(delays: &[Duration]) -> Vec<FarHost> {
    delays
        .iter()
        .zip(1u8..=254)
        .map(|(delay, last)| FarHost {
            addr: Ipv4Addr::new(198, 51, 100, last),
            delay: *delay,
        })
        .collect()
}

/// The prober, the farm and its far hosts; everything goes on drop (the responder first).
pub struct FarLab {
    // Field order is drop order: the responder's threads stop before the namespaces go.
    responder: Responder,
    lab: Lab,
    hosts: Vec<FarHost>,
}

impl FarLab {
    /// Builds the lab and starts answering for `hosts` (each in 198.51.100.0/24, none twice).
    /// Needs root.
    pub fn start(hosts: &[FarHost]) -> anyhow::Result<Self> {
        for (i, host) in hosts.iter().enumerate() {
            let [a, b, c, _] = host.addr.octets();
            if [a, b, c] != [198, 51, 100] {
                bail!("far host {} is outside {FAR_NET}", host.addr);
            }
            if hosts[..i].iter().any(|other| other.addr == host.addr) {
                bail!("far host {} is listed twice", host.addr);
            }
        }
        let lab = Lab::with_pair(
            (PROBER, &format!("{PROBER_ADDR}/24")),
            (FARM, &format!("{FARM_ADDR}/24")),
        )?;
        lab.exec(FARM, &["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"])?;
        lab.ip(FARM, &["route", "add", "local", FAR_NET, "dev", "lo"])?;
        lab.ip(PROBER, &["route", "add", FAR_NET, "via", FARM_ADDR])?;
        for host in [PROBER, FARM] {
            lab.wait_until_up(host, Duration::from_secs(5))?;
        }
        let delays: Vec<(Ipv4Addr, Duration)> = hosts.iter().map(|h| (h.addr, h.delay)).collect();
        let responder = Responder::start(&lab.ns(FARM), &delays)?;
        Ok(Self {
            responder,
            lab,
            hosts: hosts.to_vec(),
        })
    }

    /// The lab: [`PROBER`] and [`FARM`], each with `eth0`.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The full namespace name of `host` ([`PROBER`] or [`FARM`]).
    pub fn ns(&self, host: &str) -> String {
        self.lab.ns(host)
    }

    /// The far hosts, as given.
    pub fn hosts(&self) -> &[FarHost] {
        &self.hosts
    }

    /// What the responder has done so far.
    pub fn tally(&self) -> Tally {
        self.responder.tally()
    }

    /// `ping` from the prober to `addr`: `count` requests `interval` apart, each waited for
    /// up to the longest delay and a second more.
    pub fn ping(&self, addr: Ipv4Addr, count: u32, interval: Duration) -> anyhow::Result<Ping> {
        let longest = self.hosts.iter().map(|h| h.delay).max().unwrap_or_default();
        let wait = longest + Duration::from_secs(1);
        ping(&self.ns(PROBER), addr, count, interval, wait)
    }

    /// Pings every far host from the prober at once, `count` requests each, `interval` apart
    /// (so with an interval under a host's delay, several of its requests are in flight at
    /// once); fails unless every request is answered within `tolerance` after its host's delay
    /// (never before it). Returns each host with what ping measured. The premise check of the
    /// tests that use this lab.
    pub fn check_delays(
        &self,
        count: u32,
        interval: Duration,
        tolerance: Duration,
    ) -> anyhow::Result<Vec<(FarHost, Ping)>> {
        let pings: Vec<anyhow::Result<Ping>> = std::thread::scope(|scope| {
            let threads: Vec<_> = self
                .hosts
                .iter()
                .map(|host| scope.spawn(move || self.ping(host.addr, count, interval)))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut measured = Vec::new();
        for (host, ping) in self.hosts.iter().zip(pings) {
            let ping = ping?;
            let (lowest, highest) = (host.delay, host.delay + tolerance);
            if ping.received != count || ping.min < lowest || ping.max > highest {
                bail!(
                    "{} should answer after {:?} (up to {:?} later): {ping:?} (responder: {:?})",
                    host.addr,
                    host.delay,
                    tolerance,
                    self.tally()
                );
            }
            measured.push((*host, ping));
        }
        Ok(measured)
    }
}

/// What one `ping` run measured: requests sent and answered, and the round-trip times to the
/// microsecond (from its `rtt min/avg/max/mdev` line; none when nothing was answered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ping {
    pub sent: u32,
    pub received: u32,
    pub min: Duration,
    pub avg: Duration,
    pub max: Duration,
}

/// iputils `ping -n -c COUNT -i INTERVAL -W WAIT ADDR` in namespace `ns`: `count` requests
/// `interval` apart, each answer waited for up to `wait`. Fails only if ping cannot run or
/// prints no statistics.
pub fn ping(
    ns: &str,
    addr: Ipv4Addr,
    count: u32,
    interval: Duration,
    wait: Duration,
) -> anyhow::Result<Ping> {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns, "ping", "-n", "-q"])
        .args(["-W", &format!("{:.3}", wait.as_secs_f64())])
        .args(["-c", &count.to_string()])
        .args(["-i", &format!("{:.3}", interval.as_secs_f64())])
        .arg(addr.to_string());
    let out = command
        .output()
        .with_context(|| format!("running {}", crate::cmd::describe(&command)))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).with_context(|| {
        format!(
            "no statistics from ping {addr} ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The statistics at the end of iputils ping's output.
pub fn parse_ping(text: &str) -> Option<Ping> {
    let counts = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = counts
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(str::parse::<u32>);
    let sent = numbers.next()?.ok()?;
    let received = numbers.next()?.ok()?;
    let mut ping = Ping {
        sent,
        received,
        ..Ping::default()
    };
    // rtt min/avg/max/mdev = 0.046/0.058/0.074/0.010 ms
    if let Some(line) = text.lines().find(|l| l.contains("min/avg/max")) {
        // Followed by `, pipe N` when several requests were in flight at once.
        let figures = line.split('=').nth(1)?.split("ms").next()?.trim();
        let ms: Vec<Duration> = figures
            .split('/')
            .map(|f| f.parse::<f64>().ok().map(micros))
            .collect::<Option<_>>()?;
        let [min, avg, max, _mdev] = ms[..] else {
            return None;
        };
        (ping.min, ping.avg, ping.max) = (min, avg, max);
    }
    Some(ping)
}

/// Milliseconds as ping prints them (three decimals) to the microsecond.
fn micros(ms: f64) -> Duration {
    Duration::from_micros((ms * 1000.0).round().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_hosts_are_numbered_in_test_net_2() {
        let hosts = far_hosts(&[Duration::ZERO, Duration::from_millis(5)]);
        assert_eq!(
            hosts,
            [
                FarHost {
                    addr: Ipv4Addr::new(198, 51, 100, 1),
                    delay: Duration::ZERO
                },
                FarHost {
                    addr: Ipv4Addr::new(198, 51, 100, 2),
                    delay: Duration::from_millis(5)
                },
            ]
        );
    }

    #[test]
    fn ping_statistics_are_read_to_the_microsecond() {
        let out = "PING 198.51.100.8 (198.51.100.8) 56(84) bytes of data.\n\n\
                   --- 198.51.100.8 ping statistics ---\n\
                   5 packets transmitted, 5 received, 0% packet loss, time 201ms\n\
                   rtt min/avg/max/mdev = 400.083/400.127/400.190/0.041 ms, pipe 5\n";
        let ping = parse_ping(out).unwrap();
        assert_eq!(
            ping,
            Ping {
                sent: 5,
                received: 5,
                min: Duration::from_micros(400_083),
                avg: Duration::from_micros(400_127),
                max: Duration::from_micros(400_190),
            }
        );
        assert_eq!(parse_ping(&out.replace(", pipe 5", "")), Some(ping));
        let silent = "--- 198.51.100.9 ping statistics ---\n\
                      3 packets transmitted, 0 received, 100% packet loss, time 2030ms\n";
        assert_eq!(
            parse_ping(silent),
            Some(Ping {
                sent: 3,
                ..Ping::default()
            })
        );
        assert_eq!(parse_ping("ping: connect: Network is unreachable\n"), None);
    }

    mod privileged {
        use std::time::Instant;

        use super::super::*;
        use crate::{netns, require_root};

        const DELAYS_MS: [u64; 9] = [0, 5, 20, 50, 100, 150, 250, 400, 1500];
        /// The responder on time to a few milliseconds, even on a busy 2-core VM: the
        /// integration tests allow for its measured lateness (its tally), so this only
        /// checks that it is roughly right.
        const TOLERANCE: Duration = Duration::from_millis(5);

        /// Every far host answers ping after its own delay, to within a few milliseconds, with
        /// several requests to each in flight at once and every host pinged at the same time;
        /// the farm's kernel and the addresses without a delay stay silent; all of it goes on
        /// drop.
        #[test]
        fn far_hosts_answer_ping_after_their_delays() {
            require_root();
            let delays: Vec<Duration> = DELAYS_MS
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect();
            let hosts = far_hosts(&delays);
            let far = FarLab::start(&hosts).expect("the far lab");
            let started = Instant::now();
            // 5 requests 20 ms apart: up to 5 in flight to each host of 100 ms and more.
            let measured = far
                .check_delays(5, Duration::from_millis(20), TOLERANCE)
                .unwrap_or_else(|e| panic!("{e:#}"));
            let took = started.elapsed();
            for (host, ping) in &measured {
                println!(
                    "{} delay {:>4} ms: rtt min {:.3} avg {:.3} max {:.3} ms (+{} us at most)",
                    host.addr,
                    host.delay.as_millis(),
                    ms(ping.min),
                    ms(ping.avg),
                    ms(ping.max),
                    (ping.max - host.delay).as_micros(),
                );
            }
            // All at once: about the longest delay plus 80 ms of sending, not their sum.
            assert!(took < Duration::from_millis(2500), "took {took:?}");
            let tally = far.tally();
            println!("responder: {tally:?}");
            assert_eq!(tally.requests, 5 * hosts.len() as u64);
            assert_eq!(tally.answered, tally.requests);
            assert_eq!(tally.send_errors, 0);
            assert!(tally.max_late < TOLERANCE, "{tally:?}");

            // An address of the farm without a delay, and the farm itself (its kernel told not
            // to answer), stay silent; the responder saw both and let them be.
            std::thread::scope(|scope| {
                for silent in ["198.51.100.200", FARM_ADDR] {
                    let far = &far;
                    scope.spawn(move || {
                        let addr = silent.parse().unwrap();
                        let ping = far.ping(addr, 2, Duration::from_millis(20)).unwrap();
                        assert_eq!((ping.sent, ping.received), (2, 0), "{silent}: {ping:?}");
                    });
                }
            });
            assert_eq!(far.tally().ignored, 4);
            assert_eq!(far.tally().answered, tally.answered);

            let names = far.lab().namespaces().to_vec();
            let dropped = Instant::now();
            drop(far);
            assert!(
                dropped.elapsed() < Duration::from_secs(2),
                "{:?}",
                dropped.elapsed()
            );
            let left = netns::list().unwrap();
            assert!(names.iter().all(|n| !left.contains(n)), "{left:?}");
        }

        /// Many requests in flight to one host at once, far more than one per delay: each is
        /// still answered after exactly its delay, and in order.
        #[test]
        fn a_burst_to_one_far_host_is_answered_on_time() {
            require_root();
            let hosts = far_hosts(&[Duration::from_millis(250)]);
            let far = FarLab::start(&hosts).expect("the far lab");
            // 50 requests 2 ms apart: all 50 in flight before the first answer.
            let ping = far
                .ping(hosts[0].addr, 50, Duration::from_millis(2))
                .expect("ping");
            println!(
                "250 ms host, 50 requests 2 ms apart: {ping:?}, {:?}",
                far.tally()
            );
            assert_eq!(ping.received, 50, "{ping:?}");
            assert!(ping.min >= hosts[0].delay, "{ping:?}");
            assert!(ping.max <= hosts[0].delay + TOLERANCE, "{ping:?}");
        }

        #[test]
        fn far_hosts_must_be_in_test_net_2_and_listed_once() {
            require_root();
            let outside = [FarHost {
                addr: Ipv4Addr::new(192, 0, 2, 9),
                delay: Duration::ZERO,
            }];
            let err = FarLab::start(&outside).err().expect("refused");
            assert!(
                format!("{err:#}").contains("outside 198.51.100.0/24"),
                "{err:#}"
            );
            let twice = [far_hosts(&[Duration::ZERO])[0]; 2];
            let err = FarLab::start(&twice).err().expect("refused");
            assert!(format!("{err:#}").contains("listed twice"), "{err:#}");
        }

        fn ms(d: Duration) -> f64 {
            d.as_secs_f64() * 1000.0
        }
    }
}
