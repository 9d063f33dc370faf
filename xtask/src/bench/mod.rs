//! `cargo xtask bench`: xdprobe against fping, on one farm of up to 131,072 IPv4 and 131,072
//! IPv6 hosts.
//!
//! For each IPv4 host count, then each IPv6 one, it runs, one after the other on the same farm:
//! `xdprobe monitor` (replies counted in XDP), `xdprobe monitor --receive socket` (the ablation:
//! replies received in userspace) and fping, all with 2 probes per host per 1 s window. Around
//! every run it records whole-machine CPU time, wall time, peak memory and the farm's own echo
//! counters for the family, then prints one table per family and host count and writes them to
//! `BENCHMARKS.md`.
mod farm;
mod fping;
mod measure;
mod report;
mod xdprobe;

use std::{
    fs::{self, File},
    io::{BufReader, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{cargo_cmd, cmd};
use farm::{Family, Farm, PROBER};
use measure::Observed;
use report::{Document, Machine, Outcome, Row, SizeResult, Tool};

/// Echo requests per host per window, and the window: the schedule both tools follow.
const PROBES: u32 = 2;
const WINDOW_MS: u64 = 1000;
/// Time for the machine to settle between runs.
const SETTLE: Duration = Duration::from_secs(2);
/// Background load (in cores) before a run that the report mentions: CPU figures are
/// whole-machine, so other work on the box inflates them.
const BACKGROUND_WORTH_NOTING: f64 = 0.05;
/// On top of its windows, how long xdprobe may take (start-up, loading the XDP program, the last
/// window's replies) before it is stopped.
const XDPROBE_MARGIN: Duration = Duration::from_secs(60);
/// fping is stopped after twice the windows' time plus this.
const FPING_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// IPv4 host counts to measure (at most 131072), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "256,2048,4096,16384,65536,131072"
    )]
    sizes: Vec<usize>,
    /// IPv6 host counts to measure after the IPv4 ones (at most 131072), comma-separated; the
    /// option alone measures none.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        num_args = 0..=1,
        default_value = "131072"
    )]
    ipv6_sizes: Vec<usize>,
    /// Windows per run (1 s each, 2 probes per host per window).
    #[arg(long, default_value_t = 20)]
    windows: u32,
    /// Tools to run, comma-separated; for each host count they run in this order: xdprobe,
    /// socket (xdprobe --receive socket), fping.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "xdprobe,socket,fping"
    )]
    tools: Vec<Tool>,
    /// fping's -i: least time between two of its sends, ms. By default its fastest legal mode
    /// for each host count: 0 while its 65,535 sequence numbers last (it will not reuse one
    /// within 10 s), else the smallest interval that never exhausts them (0.153).
    #[arg(long, value_name = "MS")]
    fping_interval: Option<f64>,
    /// Where to write the report [default: BENCHMARKS.md at the workspace root].
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

impl BenchArgs {
    fn validate(&mut self) -> Result<()> {
        ensure!(
            !self.sizes.is_empty(),
            "--sizes needs at least one host count"
        );
        for (option, sizes, family) in [
            ("--sizes", &self.sizes, Family::V4),
            ("--ipv6-sizes", &self.ipv6_sizes, Family::V6),
        ] {
            if let Some(bad) = sizes.iter().find(|&&n| n == 0 || n > farm::MAX_HOSTS) {
                bail!(
                    "{option}: {bad} hosts: the farm has 1 to {} ({})",
                    farm::MAX_HOSTS,
                    family.range()
                );
            }
        }
        ensure!(self.windows > 0, "--windows must be at least 1");
        if let Some(interval) = self.fping_interval {
            ensure!(
                interval.is_finite() && interval >= 0.0,
                "--fping-interval must be a number of milliseconds"
            );
        }
        self.tools.sort();
        self.tools.dedup();
        ensure!(!self.tools.is_empty(), "--tools needs at least one tool");
        Ok(())
    }

    /// What is measured, in order: every IPv4 host count, then every IPv6 one.
    fn runs(&self) -> impl Iterator<Item = (Family, usize)> + '_ {
        let v4 = self.sizes.iter().map(|&n| (Family::V4, n));
        let v6 = self.ipv6_sizes.iter().map(|&n| (Family::V6, n));
        v4.chain(v6)
    }

    /// The command line, for the report.
    fn invocation(&self) -> String {
        let list = |items: Vec<String>| items.join(",");
        let sizes = |sizes: &[usize]| list(sizes.iter().map(ToString::to_string).collect());
        // `--ipv6-sizes` alone when there are none.
        let ipv6_sizes = match sizes(&self.ipv6_sizes) {
            none if none.is_empty() => String::new(),
            some => format!(" {some}"),
        };
        let mut line = format!(
            "cargo xtask bench --sizes {} --ipv6-sizes{ipv6_sizes} --windows {} --tools {}",
            sizes(&self.sizes),
            self.windows,
            list(self.tools.iter().map(|t| t.slug().to_owned()).collect()),
        );
        if let Some(interval) = self.fping_interval {
            line.push_str(&format!(" --fping-interval {interval}"));
        }
        if let Some(output) = &self.output {
            line.push_str(&format!(" --output {}", output.display()));
        }
        line
    }
}

pub fn bench(mut args: BenchArgs) -> Result<()> {
    args.validate()?;
    if !cmd::is_root()? {
        bail!(
            "the bench creates network namespaces and loads XDP programs; run `cargo xtask bench` \
             as root"
        );
    }
    let wants_xdprobe = args.tools.iter().any(|t| *t != Tool::Fping);
    let xdprobe_bin = if wants_xdprobe {
        let bin = cargo_cmd::build_xdprobe(true)?;
        ensure_monitor(&bin)?;
        Some(bin)
    } else {
        None
    };
    let mut machine = machine()?;
    machine.xdprobe_version = xdprobe_bin.as_deref().map(xdprobe_version);
    if args.tools.contains(&Tool::Fping) {
        let version = cmd::output(Command::new("fping").arg("-v"))
            .context("fping is needed (`cargo xtask setup` installs it)")?;
        // `fping: Version 5.1`
        let version = version.trim();
        machine.fping_version = Some(
            version
                .strip_prefix("fping: ")
                .unwrap_or(version)
                .to_owned(),
        );
    }
    let work = cargo_cmd::target_dir().join("xtask-bench");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let ticks = measure::clock_ticks_per_second()? as f64;

    println!(
        "bench: building the farm ({} and {} behind a veth)",
        farm::RANGE,
        farm::RANGE6
    );
    let farm = Farm::build()?;
    farm.check()?;
    let bench = Bench {
        args: &args,
        farm: &farm,
        xdprobe_bin: xdprobe_bin.as_deref(),
        work: &work,
        ticks,
    };
    let mut results = Vec::new();
    for (family, hosts) in args.runs() {
        let hosts_file = work.join(hosts_file_name(family, hosts));
        farm::write_hosts_file(&hosts_file, family, hosts)?;
        let mut rows = Vec::new();
        for &tool in &args.tools {
            // Settle, and see how busy the machine is without us.
            let background = measure::busy_cores_during(SETTLE, ticks)?;
            println!(
                "bench: {} {} hosts, {}: {} windows",
                report::int(hosts as u64),
                family.label(),
                tool.label(),
                args.windows
            );
            let mut row = bench
                .run(tool, family, hosts, &hosts_file)
                .with_context(|| {
                    format!(
                        "running {} over {hosts} {} hosts",
                        tool.label(),
                        family.label()
                    )
                })?;
            if background >= BACKGROUND_WORTH_NOTING {
                row.notes.push(format!(
                    "the machine was already {:.0}% of a core busy in the {} s before this run",
                    background * 100.0,
                    SETTLE.as_secs()
                ));
            }
            println!("bench: {}", one_line(&row));
            rows.push(row);
        }
        results.push(SizeResult {
            family,
            hosts,
            windows: args.windows,
            probes: PROBES,
            window_ms: WINDOW_MS,
            rows,
        });
    }
    let farm_commands = farm.commands.clone();
    let farm_notes: Vec<String> = farm
        .skipped
        .iter()
        .map(|s| format!("not set: {s}"))
        .collect();
    // Removes the namespaces before the report is printed.
    drop(farm);

    let markdown = Document {
        invocation: &args.invocation(),
        machine: &machine,
        farm_commands: &farm_commands,
        farm_notes: &farm_notes,
        results: &results,
    }
    .render();
    println!("\n{markdown}");
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| cargo_cmd::workspace_root().join("BENCHMARKS.md"));
    fs::write(&output, &markdown).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "bench: wrote {} (tool output in {})",
        output.display(),
        work.display()
    );
    Ok(())
}

/// The hosts file of a run: `hosts-256.txt` (IPv4, as before) or `hosts6-256.txt`.
fn hosts_file_name(family: Family, hosts: usize) -> String {
    match family {
        Family::V4 => format!("hosts-{hosts}.txt"),
        Family::V6 => format!("hosts6-{hosts}.txt"),
    }
}

/// Where a run's output goes, without extension: `256-fping` (IPv4, as before) or
/// `256-ipv6-fping`.
fn run_stem(family: Family, hosts: usize, tool: Tool) -> String {
    match family {
        Family::V4 => format!("{hosts}-{}", tool.slug()),
        Family::V6 => format!("{hosts}-ipv6-{}", tool.slug()),
    }
}

/// Fails unless the binary has the `monitor` command the bench drives.
fn ensure_monitor(bin: &Path) -> Result<()> {
    let out = cmd::capture(Command::new(bin).args(["monitor", "--help"]))?;
    let help = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !help.contains("--receive") {
        bail!(
            "{} has no `monitor --receive` command yet (`xdprobe monitor --help` failed: {}); \
             `--tools fping` measures fping alone",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn xdprobe_version(bin: &Path) -> String {
    let version = cmd::output(Command::new(bin).arg("--version")).unwrap_or_default();
    let commit = cmd::output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(cargo_cmd::workspace_root()),
    )
    .unwrap_or_default();
    let dirty = cmd::capture(
        Command::new("git")
            .args([
                "diff",
                "--quiet",
                "HEAD",
                "--",
                "probe-user",
                "probe-ebpf",
                "probe-common",
            ])
            .current_dir(cargo_cmd::workspace_root()),
    )
    .is_ok_and(|out| !out.status.success());
    format!(
        "{} (release build, commit {}{})",
        version.trim(),
        commit.trim(),
        if dirty { " with local changes" } else { "" }
    )
}

fn machine() -> Result<Machine> {
    let (cpu_model, cores) = report::parse_cpuinfo(&fs::read_to_string("/proc/cpuinfo")?);
    let mem_kib = report::parse_meminfo_total(&fs::read_to_string("/proc/meminfo")?)
        .context("no MemTotal in /proc/meminfo")?;
    Ok(Machine {
        cpu_model,
        cores,
        mem_kib,
        kernel: cmd::output(Command::new("uname").arg("-r"))?
            .trim()
            .to_owned(),
        date: cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?
            .trim()
            .to_owned(),
        ..Machine::default()
    })
}

struct Bench<'a> {
    args: &'a BenchArgs,
    farm: &'a Farm,
    xdprobe_bin: Option<&'a Path>,
    work: &'a Path,
    ticks: f64,
}

impl Bench<'_> {
    fn run(&self, tool: Tool, family: Family, hosts: usize, hosts_file: &Path) -> Result<Row> {
        let windows = self.args.windows;
        let needed = hosts as f64 * f64::from(PROBES) * 1000.0 / WINDOW_MS as f64;
        let fping_interval = self
            .args
            .fping_interval
            .unwrap_or_else(|| fping::fastest_interval(needed));
        let schedule = Duration::from_millis(WINDOW_MS) * windows;
        let (mut command, cap) = match tool {
            Tool::Xdprobe | Tool::Socket => {
                let bin = self.xdprobe_bin.context("xdprobe was not built")?;
                let receive = if tool == Tool::Xdprobe {
                    xdprobe::Receive::Xdp
                } else {
                    xdprobe::Receive::Socket
                };
                let mut command = self.farm.exec(PROBER, bin)?;
                command.args(xdprobe::args(
                    farm::IFACE,
                    hosts_file,
                    PROBES,
                    WINDOW_MS,
                    windows,
                    receive,
                ));
                (command, schedule + XDPROBE_MARGIN)
            }
            Tool::Fping => {
                let mut command = self.farm.exec(PROBER, "fping")?;
                command.args(fping::args(
                    family,
                    hosts_file,
                    PROBES,
                    WINDOW_MS,
                    windows,
                    fping_interval,
                ));
                (command, schedule * 2 + FPING_MARGIN)
            }
        };
        let stem = self.work.join(run_stem(family, hosts, tool));
        let out_path = stem.with_extension("out");
        let err_path = stem.with_extension("err");
        let create = |path: &Path| {
            File::create(path).with_context(|| format!("creating {}", path.display()))
        };
        command
            .stdout(create(&out_path)?)
            .stderr(create(&err_path)?);
        let described = cmd::describe(&command);

        let farm_before = self.farm.echo_counters(family)?;
        let drops_before = measure::read_softnet_drops()?;
        let observed = measure::observe(&mut command, cap)?;
        let drops = measure::read_softnet_drops()?.saturating_sub(drops_before);
        let farm_seen = self.farm.echo_counters(family)?.since(farm_before);
        let used = measure::cpu_use(
            observed.cpu_before,
            observed.cpu_after,
            observed.cpu_elapsed,
            self.ticks,
        );

        let mut row = Row {
            tool,
            command: described,
            outcome: if observed.capped {
                Outcome::Capped(cap)
            } else {
                Outcome::Finished
            },
            sent: None,
            replies: None,
            false_downs: None,
            wall: observed.wall,
            cpu_secs: used.not_idle_secs,
            cpu_fields_secs: used.busy_fields_secs,
            vm_hwm_kib: observed.vm_hwm_kib,
            map_kib: None,
            farm: Some(farm_seen),
            notes: Vec::new(),
        };
        match tool {
            Tool::Fping => {
                fill_fping(&mut row, &err_path, &observed)?;
                if let Some(note) = fping_rate_note(fping_interval, needed) {
                    row.notes.push(note);
                }
            }
            Tool::Xdprobe | Tool::Socket => {
                fill_xdprobe(&mut row, hosts, &out_path, &err_path, &observed)?
            }
        }
        if let Some(own) = observed.process_ticks {
            row.notes.push(format!(
                "its own CPU (user + system, all threads): {:.2} s",
                own as f64 / self.ticks
            ));
        }
        if drops > 0 {
            row.notes.push(format!(
                "the kernel dropped {} packets during this run (softnet backlog full, \
                 net.core.netdev_max_backlog)",
                report::int(drops)
            ));
        }
        Ok(row)
    }
}

fn fill_fping(row: &mut Row, err_path: &Path, observed: &Observed) -> Result<()> {
    let parsed = fping::parse(BufReader::new(File::open(err_path)?), 2 * PROBES)?;
    if let Some(error) = &parsed.error {
        row.outcome = Outcome::Failed(format!("fping error: {error}"));
        return Ok(());
    }
    if parsed.targets == 0 && parsed.stats_sent.is_none() {
        row.outcome = Outcome::Failed(exit_and_tail(observed.status, err_path));
        return Ok(());
    }
    row.sent = Some(parsed.sent());
    row.replies = Some(parsed.replies());
    row.false_downs = Some(parsed.false_downs);
    if parsed.never_probed > 0 {
        row.notes.push(format!(
            "{} of {} hosts never got a probe",
            report::int(parsed.never_probed),
            report::int(parsed.targets)
        ));
    }
    Ok(())
}

/// Why fping cannot keep the period, if `-i` alone rules it out.
fn fping_rate_note(interval_ms: f64, needed: f64) -> Option<String> {
    let most = 1000.0 / interval_ms;
    (interval_ms > 0.0 && most < needed).then(|| {
        format!(
            "cannot keep the period: -i {interval_ms} allows at most {} probes/s and it needs {}; \
             a smaller -i runs out of fping's 65,535 sequence numbers (one may not be reused \
             within 10 s) and fping aborts",
            report::int(most.floor() as u64),
            report::int(needed.round() as u64)
        )
    })
}

fn fill_xdprobe(
    row: &mut Row,
    hosts: usize,
    out_path: &Path,
    err_path: &Path,
    observed: &Observed,
) -> Result<()> {
    let parsed = xdprobe::parse(BufReader::new(File::open(out_path)?))?;
    // 0: all up, 1: some down; anything else is an error.
    let exit_ok = matches!(observed.status.code(), Some(0 | 1)) || observed.capped;
    let Some(summary) = parsed.summary.as_ref().filter(|_| exit_ok) else {
        row.outcome = Outcome::Failed(exit_and_tail(observed.status, err_path));
        return Ok(());
    };
    row.sent = Some(summary.sent);
    row.replies = Some(summary.answered);
    row.false_downs = Some(parsed.false_downs());
    row.map_kib = summary.map_kib;
    if summary.map_kib.is_none() && row.tool == Tool::Xdprobe {
        row.notes
            .push("it did not report its BPF maps' size (map_kib)".to_owned());
    }
    if summary.hosts != hosts as u64 {
        row.notes.push(format!(
            "monitored {} hosts, not {}",
            report::int(summary.hosts),
            report::int(hosts as u64)
        ));
    }
    if let Some(late) = summary.late_rounds.filter(|&late| late > 0) {
        row.notes.push(format!(
            "{} rounds went out late (could not keep the period)",
            report::int(late)
        ));
    }
    if let Some(own) = summary.peak_rss_kib {
        row.notes
            .push(format!("its own peak RSS figure: {}", report::kib(own)));
    }
    if summary.down > 0 || summary.unknown > 0 {
        row.notes.push(format!(
            "at the end: {} up, {} down, {} unknown",
            report::int(summary.up),
            report::int(summary.down),
            report::int(summary.unknown)
        ));
    }
    if parsed.other_lines > 0 {
        row.notes.push(format!(
            "{} lines of its output were not JSON (see {})",
            parsed.other_lines,
            out_path.display()
        ));
    }
    Ok(())
}

/// `exit status: 3: <the last lines of stderr>`.
fn exit_and_tail(status: ExitStatus, err_path: &Path) -> String {
    let tail = tail(err_path, 600).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        format!("{status}, no error output")
    } else {
        format!("{status}: {tail}")
    }
}

/// The last `bytes` bytes of a file, as text.
fn tail(path: &Path, bytes: u64) -> Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A progress line after each run.
fn one_line(row: &Row) -> String {
    let state = match &row.outcome {
        Outcome::Finished => "finished".to_owned(),
        Outcome::Capped(after) => format!("stopped at the {} s cap", after.as_secs()),
        Outcome::Failed(why) => format!("failed: {why}"),
    };
    format!(
        "{}: {state}; sent {}, replies {}, {:.1} s wall, {:.2} CPU s",
        row.tool.label(),
        row.sent.map_or_else(|| "–".into(), report::int),
        row.replies.map_or_else(|| "–".into(), report::int),
        row.wall.as_secs_f64(),
        row.cpu_secs
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(line: &[&str]) -> Result<BenchArgs> {
        let mut args =
            Cli::try_parse_from(std::iter::once("bench").chain(line.iter().copied()))?.args;
        args.validate()?;
        Ok(args)
    }

    #[test]
    fn defaults_are_the_issues_sizes_windows_and_tools() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.sizes, [256, 2048, 4096, 16384, 65536, 131072]);
        assert_eq!(args.windows, 20);
        assert_eq!(args.ipv6_sizes, [131072]);
        assert_eq!(args.tools, [Tool::Xdprobe, Tool::Socket, Tool::Fping]);
        assert_eq!(
            args.invocation(),
            "cargo xtask bench --sizes 256,2048,4096,16384,65536,131072 --ipv6-sizes 131072 \
             --windows 20 --tools xdprobe,socket,fping"
        );
        let runs: Vec<_> = args.runs().collect();
        assert_eq!(runs.len(), 7);
        assert_eq!(runs[5], (Family::V4, 131072));
        assert_eq!(runs[6], (Family::V6, 131072));
    }

    #[test]
    fn ipv6_sizes_run_after_the_ipv4_ones_and_alone_mean_none() {
        let args = parse(&[
            "--sizes",
            "256",
            "--ipv6-sizes",
            "4096,256",
            "--windows",
            "3",
        ])
        .unwrap();
        assert_eq!(
            args.runs().collect::<Vec<_>>(),
            [(Family::V4, 256), (Family::V6, 4096), (Family::V6, 256)]
        );
        assert_eq!(
            args.invocation(),
            "cargo xtask bench --sizes 256 --ipv6-sizes 4096,256 --windows 3 \
             --tools xdprobe,socket,fping"
        );
        // The option alone, last or followed by another option: no IPv6 runs, and the
        // invocation says so in a form that parses back to the same.
        for line in [
            &["--sizes", "256", "--ipv6-sizes"][..],
            &["--ipv6-sizes", "--sizes", "256"],
        ] {
            let args = parse(line).unwrap();
            assert!(args.ipv6_sizes.is_empty(), "{line:?}");
            assert_eq!(args.runs().collect::<Vec<_>>(), [(Family::V4, 256)]);
            let invocation = args.invocation();
            assert_eq!(
                invocation,
                "cargo xtask bench --sizes 256 --ipv6-sizes --windows 20 \
                 --tools xdprobe,socket,fping"
            );
            let words: Vec<&str> = invocation.split(' ').skip(3).collect();
            assert_eq!(parse(&words).unwrap().ipv6_sizes, args.ipv6_sizes);
        }
    }

    #[test]
    fn runs_of_each_family_have_their_own_files() {
        assert_eq!(hosts_file_name(Family::V4, 256), "hosts-256.txt");
        assert_eq!(hosts_file_name(Family::V6, 256), "hosts6-256.txt");
        assert_eq!(run_stem(Family::V4, 256, Tool::Fping), "256-fping");
        assert_eq!(run_stem(Family::V6, 256, Tool::Fping), "256-ipv6-fping");
    }

    #[test]
    fn tools_run_in_a_fixed_order_once_each() {
        let args = parse(&[
            "--tools",
            "fping,xdprobe,fping",
            "--sizes",
            "4096",
            "--windows",
            "5",
            "--output",
            "/tmp/b.md",
        ])
        .unwrap();
        assert_eq!(args.tools, [Tool::Xdprobe, Tool::Fping]);
        assert_eq!(
            args.invocation(),
            "cargo xtask bench --sizes 4096 --ipv6-sizes 131072 --windows 5 --tools xdprobe,fping \
             --output /tmp/b.md"
        );
    }

    #[test]
    fn sizes_beyond_the_farm_are_refused() {
        assert!(parse(&["--sizes", "131073"]).is_err());
        assert!(parse(&["--sizes", "0"]).is_err());
        let err = parse(&["--ipv6-sizes", "256,131073"]).unwrap_err();
        assert!(
            err.to_string().contains("--ipv6-sizes: 131073 hosts"),
            "{err}"
        );
        assert!(err.to_string().contains("2001:db8:1::/111"), "{err}");
        assert!(parse(&["--ipv6-sizes", "0"]).is_err());
        assert!(parse(&["--ipv6-sizes", "many"]).is_err());
        assert!(parse(&["--windows", "0"]).is_err());
        assert!(parse(&["--tools", "ping"]).is_err());
        assert!(parse(&["--fping-interval", "-1"]).is_err());
    }

    #[test]
    fn fping_is_told_when_its_interval_rules_out_the_period() {
        let note = fping_rate_note(fping::DEFAULT_INTERVAL_MS, 8192.0).unwrap();
        assert!(
            note.starts_with(
                "cannot keep the period: -i 0.153 allows at most 6,535 probes/s and it needs 8,192"
            ),
            "{note}"
        );
        assert_eq!(fping_rate_note(fping::DEFAULT_INTERVAL_MS, 6000.0), None);
        assert_eq!(fping_rate_note(0.0, 1e9), None);
    }

    #[test]
    fn failures_show_the_exit_status_and_the_end_of_stderr() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let err = dir.join("x.err");
        fs::write(
            &err,
            "starting\n\nError: cannot attach XDP\n  caused by: busy\n",
        )
        .unwrap();
        let status = Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(
            exit_and_tail(status, &err),
            "exit status: 3: starting / Error: cannot attach XDP /   caused by: busy"
        );
        fs::write(&err, "").unwrap();
        assert_eq!(
            exit_and_tail(status, &err),
            "exit status: 3, no error output"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
