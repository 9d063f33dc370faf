//! What the bench measures around each run, the same way for every tool: whole-machine CPU
//! time from `/proc/stat`, wall time, the child's peak memory (`VmHWM`, polled from outside),
//! the kernel's softnet drops, and the farm's own ICMP counters.
//!
//! The parsers are pure; [`observe`] is the one place that runs a tool and watches it.
use std::{
    fs,
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// How often the child's `/proc/PID/status` is read.
const POLL: Duration = Duration::from_millis(100);
/// How long a tool gets to print its results and exit after SIGINT before it is killed.
const GRACE: Duration = Duration::from_secs(15);

/// The machine-wide `cpu` line of `/proc/stat`, in clock ticks (`USER_HZ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq + steal: everything but idle and iowait. guest and
    /// guest_nice are left out because `user` and `nice` already include them.
    pub busy: u64,
    /// idle + iowait.
    pub idle: u64,
    /// Online CPUs (`cpuN` lines).
    pub cpus: u32,
}

/// Parses the `cpu ` (all CPUs) line of `/proc/stat` and counts the `cpuN` lines.
pub fn parse_proc_stat(stat: &str) -> Result<CpuTicks> {
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("/proc/stat has no `cpu` line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("unexpected /proc/stat line: {line}"))?;
    if fields.len() < 8 {
        bail!(
            "/proc/stat `cpu` line has {} fields, expected at least 8: {line}",
            fields.len()
        );
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = fields[..8] else {
        unreachable!("length checked above");
    };
    let cpus = stat
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .and_then(|rest| rest.split(char::is_whitespace).next())
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count();
    Ok(CpuTicks {
        busy: user + nice + system + irq + softirq + steal,
        idle: idle + iowait,
        cpus: u32::try_from(cpus.max(1)).unwrap_or(u32::MAX),
    })
}

pub fn read_cpu_ticks() -> Result<CpuTicks> {
    parse_proc_stat(&fs::read_to_string("/proc/stat").context("reading /proc/stat")?)
}

/// Whole-machine CPU time between two readings of `/proc/stat`, two ways.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    /// The sum of the busy fields (user + nice + system + irq + softirq + steal). With tick-based
    /// accounting on a tickless kernel these are sampled at timer ticks, and the tick stops
    /// while a CPU idles: work done in bursts shorter than a tick between idle spells (a tool
    /// that sleeps 0.15 ms between sends) is largely missed.
    pub busy_fields_secs: f64,
    /// Elapsed time × CPUs − (idle + iowait). The kernel measures idle time exactly when it
    /// enters and leaves idle, so this counts everything that was not idle, short bursts too.
    pub not_idle_secs: f64,
}

/// CPU used between `before` and `after`, read `elapsed` apart; `hz`: ticks per second.
pub fn cpu_use(before: CpuTicks, after: CpuTicks, elapsed: Duration, hz: f64) -> CpuUse {
    let busy = after.busy.saturating_sub(before.busy) as f64 / hz;
    let idle = after.idle.saturating_sub(before.idle) as f64 / hz;
    let capacity = elapsed.as_secs_f64() * f64::from(after.cpus);
    CpuUse {
        busy_fields_secs: busy,
        not_idle_secs: (capacity - idle).max(0.0),
    }
}

/// Sleeps for `period` and returns how many CPUs' worth of work the machine did meanwhile
/// (not idle).
pub fn busy_cores_during(period: Duration, ticks_per_second: f64) -> Result<f64> {
    let before = read_cpu_ticks()?;
    let started = Instant::now();
    thread::sleep(period);
    let after = read_cpu_ticks()?;
    let elapsed = started.elapsed();
    let used = cpu_use(before, after, elapsed, ticks_per_second);
    Ok(used.not_idle_secs / elapsed.as_secs_f64())
}

/// Clock ticks per second of `/proc/stat` (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks_per_second() -> Result<u64> {
    let out = cmd::output(Command::new("getconf").arg("CLK_TCK"))?;
    out.trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {out:?}"))
}

/// `VmHWM` (peak resident set, KiB) from a `/proc/PID/status`; `None` once the process has
/// released its memory (a zombie has no `Vm*` lines).
pub fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix("VmHWM:")?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime of a process (all its threads), in clock ticks, from `/proc/PID/stat`. The
/// command name in field 2 may hold spaces and parentheses: fields are counted after the last `)`.
pub fn parse_pid_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Packets the kernel dropped because a CPU's input backlog was full (`netdev_max_backlog`):
/// the second column of `/proc/net/softnet_stat`, summed over the CPUs. Global, not per
/// namespace.
pub fn parse_softnet_drops(softnet: &str) -> Result<u64> {
    softnet
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let column = line
                .split_whitespace()
                .nth(1)
                .with_context(|| format!("short /proc/net/softnet_stat line: {line}"))?;
            u64::from_str_radix(column, 16)
                .with_context(|| format!("bad /proc/net/softnet_stat line: {line}"))
        })
        .sum()
}

pub fn read_softnet_drops() -> Result<u64> {
    parse_softnet_drops(
        &fs::read_to_string("/proc/net/softnet_stat").context("reading /proc/net/softnet_stat")?,
    )
}

/// Echo traffic as the farm's kernel saw it, from its `/proc/net/snmp` (IPv4) or
/// `/proc/net/snmp6` (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EchoCounters {
    /// Echo requests that reached the farm (`Icmp: InEchos`, `Icmp6InEchos`).
    pub requests: u64,
    /// Echo replies the farm sent (`Icmp: OutEchoReps`, `Icmp6OutEchoReplies`).
    pub replies: u64,
}

impl EchoCounters {
    pub fn since(self, earlier: EchoCounters) -> EchoCounters {
        EchoCounters {
            requests: self.requests.saturating_sub(earlier.requests),
            replies: self.replies.saturating_sub(earlier.replies),
        }
    }
}

/// Parses the `Icmp:` header and value lines of `/proc/net/snmp`.
pub fn parse_snmp_echo(snmp: &str) -> Result<EchoCounters> {
    let mut icmp = snmp.lines().filter(|line| line.starts_with("Icmp:"));
    let (Some(names), Some(values)) = (icmp.next(), icmp.next()) else {
        bail!("/proc/net/snmp has no Icmp: lines");
    };
    let field = |wanted: &str| -> Result<u64> {
        let at = names
            .split_whitespace()
            .position(|name| name == wanted)
            .with_context(|| format!("/proc/net/snmp has no Icmp {wanted}"))?;
        let value = values
            .split_whitespace()
            .nth(at)
            .with_context(|| format!("/proc/net/snmp has no value for Icmp {wanted}"))?;
        value
            .parse()
            .with_context(|| format!("bad /proc/net/snmp Icmp {wanted}: {value}"))
    };
    Ok(EchoCounters {
        requests: field("InEchos")?,
        replies: field("OutEchoReps")?,
    })
}

/// Parses the ICMPv6 echo counters of `/proc/net/snmp6`: one `Name value` pair a line.
pub fn parse_snmp6_echo(snmp6: &str) -> Result<EchoCounters> {
    let field = |wanted: &str| -> Result<u64> {
        let value = snmp6
            .lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(wanted)).then(|| words.next())
            })
            .with_context(|| format!("/proc/net/snmp6 has no {wanted}"))?
            .with_context(|| format!("/proc/net/snmp6 has no value for {wanted}"))?;
        value
            .parse()
            .with_context(|| format!("bad /proc/net/snmp6 {wanted}: {value}"))
    };
    Ok(EchoCounters {
        requests: field("Icmp6InEchos")?,
        replies: field("Icmp6OutEchoReplies")?,
    })
}

/// How a watched run went.
#[derive(Debug)]
pub struct Observed {
    pub status: ExitStatus,
    pub wall: Duration,
    /// `/proc/stat` just before the start and just after the end, and the time between them.
    pub cpu_before: CpuTicks,
    pub cpu_after: CpuTicks,
    pub cpu_elapsed: Duration,
    /// The last `VmHWM` read before the child exited.
    pub vm_hwm_kib: Option<u64>,
    /// The child's own user + system ticks, last read before it exited (up to one poll short).
    pub process_ticks: Option<u64>,
    /// Whether the run hit its wall-time cap and was stopped with SIGINT.
    pub capped: bool,
}

/// Runs `command` (stdin from /dev/null, stdout/stderr as the caller set them), reading
/// `/proc/stat` just before it starts and just after it ends and polling its `VmHWM` every
/// 100 ms. After `cap` it gets SIGINT (tools print their results on it) and, 15 s later,
/// SIGKILL. `command` must exec the measured program in place (`ip netns exec` does), so the
/// child's pid is the tool's.
pub fn observe(command: &mut Command, cap: Duration) -> Result<Observed> {
    let cpu_before = read_cpu_ticks()?;
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::describe(command)))?;
    let status_file = format!("/proc/{}/status", child.id());
    let stat_file = format!("/proc/{}/stat", child.id());
    let mut vm_hwm_kib = None;
    let mut process_ticks = None;
    let mut interrupted: Option<Instant> = None;
    let status = loop {
        // Read before reaping: once reaped, the pid may belong to someone else.
        if let Some(hwm) = fs::read_to_string(&status_file)
            .ok()
            .as_deref()
            .and_then(parse_vm_hwm_kib)
        {
            vm_hwm_kib = Some(hwm);
        }
        if let Some(ticks) = fs::read_to_string(&stat_file)
            .ok()
            .as_deref()
            .and_then(parse_pid_cpu_ticks)
        {
            process_ticks = Some(ticks);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        match interrupted {
            None if started.elapsed() >= cap => {
                let pid = child.id().to_string();
                // The tool may just have exited: a failing kill is fine, try_wait tells.
                let _ = cmd::capture(Command::new("kill").args(["-INT", &pid]));
                interrupted = Some(Instant::now());
            }
            Some(at) if at.elapsed() >= GRACE => {
                eprintln!(
                    "bench: `{}` still runs {GRACE:?} after SIGINT; killing it",
                    cmd::describe(command)
                );
                child.kill()?;
                break child.wait()?;
            }
            _ => {}
        }
        thread::sleep(POLL);
    };
    let wall = started.elapsed();
    let cpu_after = read_cpu_ticks()?;
    Ok(Observed {
        status,
        wall,
        cpu_before,
        cpu_after,
        cpu_elapsed: started.elapsed(),
        vm_hwm_kib,
        process_ticks,
        capped: interrupted.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "\
cpu  100902 5978 26293 437123 2253 7 299 32 11 3
cpu0 50000 3000 13000 218000 1100 3 150 16 5 1
cpu1 50902 2978 13293 219123 1153 4 149 16 6 2
intr 123
";

    #[test]
    fn busy_counts_softirq_and_steal_not_idle_iowait_or_guest() {
        let ticks = parse_proc_stat(STAT).unwrap();
        assert_eq!(ticks.busy, 100902 + 5978 + 26293 + 7 + 299 + 32);
        assert_eq!(ticks.idle, 437123 + 2253);
        assert_eq!(ticks.cpus, 2);
    }

    #[test]
    fn old_kernels_without_guest_fields_parse_too() {
        let ticks = parse_proc_stat("cpu  1 2 3 4 5 6 7 8\n").unwrap();
        assert_eq!(ticks.busy, 1 + 2 + 3 + 6 + 7 + 8);
        assert_eq!(ticks.cpus, 1);
    }

    #[test]
    fn cpu_use_counts_what_was_not_idle() {
        let before = CpuTicks {
            busy: 1000,
            idle: 5000,
            cpus: 2,
        };
        // 10 s on 2 CPUs: 2000 ticks of capacity; 1824 idle, only 62 busy ticks sampled.
        let after = CpuTicks {
            busy: 1062,
            idle: 6824,
            cpus: 2,
        };
        let used = cpu_use(before, after, Duration::from_secs(10), 100.0);
        assert!((used.busy_fields_secs - 0.62).abs() < 1e-9, "{used:?}");
        assert!((used.not_idle_secs - 1.76).abs() < 1e-9, "{used:?}");
        // Counters never run backwards; clock jitter never makes CPU time negative.
        let used = cpu_use(after, before, Duration::from_millis(1), 100.0);
        assert_eq!(used.busy_fields_secs, 0.0);
        let idle_all = CpuTicks {
            idle: before.idle + 2010,
            ..before
        };
        assert_eq!(
            cpu_use(before, idle_all, Duration::from_secs(10), 100.0).not_idle_secs,
            0.0
        );
    }

    #[test]
    fn malformed_proc_stat_is_an_error() {
        assert!(parse_proc_stat("intr 1\n").is_err());
        assert!(parse_proc_stat("cpu  1 2 3\n").is_err());
        assert!(parse_proc_stat("cpu  1 x 3 4 5 6 7 8\n").is_err());
    }

    #[test]
    fn reads_vm_hwm_and_nothing_from_a_zombie() {
        let status = "Name:\tfping\nVmPeak:\t  600000 kB\nVmHWM:\t  505060 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(505_060));
        assert_eq!(parse_vm_hwm_kib("Name:\tfping\nState:\tZ (zombie)\n"), None);
    }

    #[test]
    fn reads_a_processes_own_cpu_ticks() {
        let stat = "4242 (x (y) z) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 40 3 4 20 0 3 0 \
                    1000 12345 678 18446744073709551615";
        assert_eq!(parse_pid_cpu_ticks(stat), Some(290));
        assert_eq!(parse_pid_cpu_ticks("4242 (x) Z 1"), None);
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_pid_cpu_ticks(&own).is_some());
    }

    #[test]
    fn sums_softnet_drops_over_cpus() {
        let softnet = "\
0001a2b3 0000000a 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
0001a2b3 00000100 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001
";
        assert_eq!(parse_softnet_drops(softnet).unwrap(), 10 + 256);
        assert!(parse_softnet_drops("0001 zz\n").is_err());
    }

    #[test]
    fn reads_echo_counters_by_name() {
        let snmp = "\
Ip: Forwarding DefaultTTL
Ip: 1 64
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InEchos InEchoReps OutMsgs OutEchos OutEchoReps
Icmp: 40962 0 0 2 40960 0 40960 0 40958
IcmpMsg: InType0 OutType8
IcmpMsg: 1 2
";
        let counters = parse_snmp_echo(snmp).unwrap();
        assert_eq!(
            counters,
            EchoCounters {
                requests: 40960,
                replies: 40958
            }
        );
        let earlier = EchoCounters {
            requests: 960,
            replies: 958,
        };
        assert_eq!(
            counters.since(earlier),
            EchoCounters {
                requests: 40000,
                replies: 40000
            }
        );
        assert!(parse_snmp_echo("Ip: a\nIp: 1\n").is_err());
    }

    /// A farm namespace's `/proc/net/snmp6` after it answered 6 pings (one neighbour
    /// solicitation too): `Icmp6InEchos` 6, `Icmp6OutEchoReplies` 6, no echoes of its own.
    const SNMP6_FARM: &str = include_str!("testdata/snmp6-farm.txt");

    #[test]
    fn reads_icmpv6_echo_counters_by_name() {
        assert_eq!(
            parse_snmp6_echo(SNMP6_FARM).unwrap(),
            EchoCounters {
                requests: 6,
                replies: 6
            }
        );
        // The names are matched whole: Icmp6InEchoReplies (0 here) is not Icmp6InEchos.
        let edited = SNMP6_FARM
            .replace(
                "Icmp6InEchos                    \t6",
                "Icmp6InEchos \t40960",
            )
            .replace(
                "Icmp6OutEchoReplies             \t6",
                "Icmp6OutEchoReplies\t40958",
            );
        assert_eq!(
            parse_snmp6_echo(&edited).unwrap(),
            EchoCounters {
                requests: 40960,
                replies: 40958
            }
        );
        let missing = parse_snmp6_echo("Icmp6InEchos 3\n").unwrap_err();
        assert!(
            missing.to_string().contains("Icmp6OutEchoReplies"),
            "{missing}"
        );
        assert!(parse_snmp6_echo("Icmp6InEchos x\nIcmp6OutEchoReplies 1\n").is_err());
        assert!(parse_snmp6_echo("Icmp6InEchos\nIcmp6OutEchoReplies 1\n").is_err());
    }

    #[test]
    fn the_machine_has_the_counters_we_read() {
        assert!(read_cpu_ticks().unwrap().busy > 0);
        read_softnet_drops().unwrap();
        let snmp = fs::read_to_string("/proc/net/snmp").unwrap();
        parse_snmp_echo(&snmp).unwrap();
        let snmp6 = fs::read_to_string("/proc/net/snmp6").unwrap();
        parse_snmp6_echo(&snmp6).unwrap();
        assert!(clock_ticks_per_second().unwrap() > 0);
    }

    #[test]
    fn observe_measures_a_short_command() {
        let observed = observe(
            Command::new("sh").args(["-c", "head -c 8000000 /dev/zero | tail -c 1 >/dev/null"]),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(observed.status.success());
        assert!(!observed.capped);
    }

    #[test]
    fn observe_interrupts_at_the_cap_and_sees_memory() {
        // Holds ~20 MiB of resident memory until SIGINT.
        let script = "x=$(head -c 20000000 /dev/zero | tr '\\0' a); trap 'exit 7' INT; \
                      while :; do sleep 0.05; done";
        let observed = observe(
            Command::new("bash").args(["-c", script]),
            Duration::from_millis(1500),
        )
        .unwrap();
        assert!(observed.capped);
        assert_eq!(observed.status.code(), Some(7));
        assert!(observed.vm_hwm_kib.unwrap() > 19_000, "{observed:?}");
        assert!(observed.wall >= Duration::from_millis(1500));
    }
}
