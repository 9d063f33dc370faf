//! The bench's results as markdown: one table per family and host count, the machine, the
//! commands.
//! Pure: everything here renders what the runs measured.
use std::{fmt::Write as _, time::Duration};

use super::{farm::Family, measure::EchoCounters};

/// The tools the bench compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Tool {
    /// `xdprobe monitor`: replies counted in XDP.
    Xdprobe,
    /// `xdprobe monitor --receive socket`: the ablation, replies received in userspace.
    Socket,
    /// Debian's fping.
    Fping,
}

impl Tool {
    pub fn label(self) -> &'static str {
        match self {
            Tool::Xdprobe => "xdprobe (XDP)",
            Tool::Socket => "xdprobe --receive socket",
            Tool::Fping => "fping",
        }
    }

    /// Short name for file names.
    pub fn slug(self) -> &'static str {
        match self {
            Tool::Xdprobe => "xdprobe",
            Tool::Socket => "socket",
            Tool::Fping => "fping",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Ran its course.
    Finished,
    /// Stopped with SIGINT at the wall-time cap; what it printed then is what it did.
    Capped(Duration),
    /// No usable results; why.
    Failed(String),
}

/// One tool's run over one host count.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub tool: Tool,
    pub command: String,
    pub outcome: Outcome,
    pub sent: Option<u64>,
    pub replies: Option<u64>,
    pub false_downs: Option<u64>,
    pub wall: Duration,
    /// Whole-machine CPU time that was not idle: the figure the ratios use.
    pub cpu_secs: f64,
    /// The same from the sum of `/proc/stat`'s busy fields, which tick sampling undercounts.
    pub cpu_fields_secs: f64,
    pub vm_hwm_kib: Option<u64>,
    /// xdprobe's BPF maps (kernel memory, not in VmHWM).
    pub map_kib: Option<u64>,
    /// Echo requests and replies the farm counted during the run.
    pub farm: Option<EchoCounters>,
    pub notes: Vec<String>,
}

impl Row {
    /// Whole-machine CPU seconds per 1,000 probes sent.
    pub fn cpu_per_1000(&self) -> Option<f64> {
        match (&self.outcome, self.sent) {
            (Outcome::Failed(_), _) | (_, None | Some(0)) => None,
            (_, Some(sent)) => Some(self.cpu_secs * 1000.0 / sent as f64),
        }
    }

    pub fn probes_per_second(&self) -> Option<f64> {
        let secs = self.wall.as_secs_f64();
        (secs > 0.0).then_some(self.sent? as f64 / secs)
    }
}

/// Everything measured for one host count of one family.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeResult {
    pub family: Family,
    pub hosts: usize,
    pub windows: u32,
    pub probes: u32,
    pub window_ms: u64,
    pub rows: Vec<Row>,
}

impl SizeResult {
    /// Probes each tool is asked to send: hosts × probes × windows.
    pub fn planned(&self) -> u64 {
        self.hosts as u64 * u64::from(self.probes) * u64::from(self.windows)
    }

    /// The send rate that keeps the period: hosts × probes per window.
    pub fn needed_rate(&self) -> f64 {
        self.hosts as f64 * f64::from(self.probes) * 1000.0 / self.window_ms as f64
    }

    /// fping's CPU per 1,000 probes divided by `row`'s: how many times less CPU than fping.
    pub fn times_less_than_fping(&self, row: &Row) -> Option<f64> {
        let fping = self.rows.iter().find(|r| r.tool == Tool::Fping)?;
        let theirs = fping.cpu_per_1000()?;
        let ours = row.cpu_per_1000()?;
        (ours > 0.0).then_some(theirs / ours)
    }
}

/// The machine the bench ran on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub mem_kib: u64,
    pub kernel: String,
    pub date: String,
    pub fping_version: Option<String>,
    pub xdprobe_version: Option<String>,
}

/// `model name` of the first CPU in `/proc/cpuinfo`, and how many processors it lists.
pub fn parse_cpuinfo(cpuinfo: &str) -> (String, usize) {
    let field = |line: &str, name: &str| -> Option<String> {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    };
    let model = cpuinfo
        .lines()
        .find_map(|line| field(line, "model name"))
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|line| field(line, "processor").is_some())
        .count();
    (model, cores)
}

/// `MemTotal` from `/proc/meminfo`, KiB.
pub fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        line.strip_prefix("MemTotal:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The whole report, as markdown.
pub struct Document<'a> {
    pub invocation: &'a str,
    pub machine: &'a Machine,
    pub farm_commands: &'a [String],
    pub farm_notes: &'a [String],
    pub results: &'a [SizeResult],
}

impl Document<'_> {
    pub fn render(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmark: xdprobe against fping\n");
        let _ = writeln!(
            md,
            "Generated by `{}`. Every tool probes the same hosts of one farm in the same run, \
             one after the other, with 2 s between runs. Nothing here is a pass/fail \
             threshold: these are measurements of one machine.\n",
            self.invocation
        );
        md.push_str(&self.machine_section());
        md.push_str(COLUMNS);
        for result in self.results {
            md.push_str(&render_size(result));
        }
        md.push_str(&self.commands_section());
        md
    }

    fn machine_section(&self) -> String {
        let m = self.machine;
        let mut md = String::from("## Machine\n\n");
        let _ = writeln!(md, "- CPU: {} ({} cores)", m.cpu_model, m.cores);
        let _ = writeln!(md, "- memory: {}", kib(m.mem_kib));
        let _ = writeln!(md, "- kernel: {}", m.kernel);
        let _ = writeln!(md, "- date: {}", m.date);
        if let Some(version) = &m.xdprobe_version {
            let _ = writeln!(md, "- xdprobe: {version}");
        }
        if let Some(version) = &m.fping_version {
            let _ = writeln!(md, "- fping: {version}");
        }
        md.push('\n');
        md
    }

    fn commands_section(&self) -> String {
        let mut md = String::from("## Commands\n\nThe farm:\n\n```sh\n");
        for command in self.farm_commands {
            let _ = writeln!(md, "{command}");
        }
        md.push_str("```\n\n");
        for note in self.farm_notes {
            let _ = writeln!(md, "- {note}");
        }
        if !self.farm_notes.is_empty() {
            md.push('\n');
        }
        md.push_str("The runs, in order:\n\n```sh\n");
        for result in self.results {
            for row in &result.rows {
                let _ = writeln!(md, "{}", row.command);
            }
        }
        md.push_str("```\n");
        md
    }
}

const COLUMNS: &str = "\
## What the columns mean

Each run probes every host with 2 echo requests per 1 s window (one every 500 ms per host) for \
the given number of windows. **probes sent** and **replies** are what the tool itself counted \
(xdprobe's summary: `sent`, `answered`, which include its retries; fping's `-s` statistics). \
**farm replied** is the farm namespace's own count of echo replies it sent during the run \
(`OutEchoReps` in its `/proc/net/snmp`; for IPv6 hosts, `Icmp6OutEchoReplies` in its \
`/proc/net/snmp6`), a check on both. **false DOWNs**: every farm host \
answers, so every host reported DOWN is false (xdprobe: hosts with a `\"to\":\"DOWN\"` state line; \
fping: hosts that lost 4 probes in a row, i.e. two windows' worth). **wall s** is the run's \
elapsed time, start-up included. **CPU s** is whole-machine CPU time from `/proc/stat` around the \
run, everything but idle and iowait (user + nice + system + irq + softirq + steal), so kernel \
work in softirq (the veth, the farm answering, XDP) counts for every tool alike; the farm's \
answering is part of every row. It is computed as elapsed time × CPUs − (idle + iowait), \
because the kernel measures idle time exactly, whereas the busy fields themselves are sampled at \
timer ticks (tick-based accounting) and the tick stops while a CPU idles: work in bursts shorter \
than a tick between idle spells, such as a tool that sleeps 0.15 ms between sends, goes largely \
uncounted there. **CPU s (busy fields)** is that plain sum of the busy fields, for comparison. \
**CPU s \
/ 1,000 probes** divides **CPU s** by the probes the tool actually sent, and **× less CPU than fping** \
is fping's CPU per 1,000 probes divided by the tool's. **probes/s** is probes sent ÷ wall time; \
keeping the period needs hosts × 2 per second. **peak memory** is the process's `VmHWM` polled \
from `/proc/PID/status` every 100 ms, the same way for every tool; xdprobe's BPF maps are kernel \
memory, outside VmHWM, and are shown after the `+`. The notes under each table give each \
tool's own CPU (user + system of its process, all threads, from `/proc/PID/stat`; the rest of \
**CPU s** is kernel work in softirq, the farm, and anything else that ran) and how busy the \
machine already was just before a run: whole-machine figures are only as good as the machine is \
quiet.

";

/// One host count's table and the notes under it.
pub fn render_size(result: &SizeResult) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## {} {} hosts × {} windows\n\n{} probes planned per tool; keeping the period needs {} \
         probes/s.\n",
        int(result.hosts as u64),
        result.family.label(),
        result.windows,
        int(result.planned()),
        int(result.needed_rate().round() as u64),
    );
    md.push_str(
        "| tool | probes sent | replies | farm replied | false DOWNs | wall s | CPU s \
         | CPU s / 1,000 probes | × less CPU than fping | probes/s | peak memory \
         | CPU s (busy fields) |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for row in &result.rows {
        let failed = matches!(row.outcome, Outcome::Failed(_));
        let opt_int = |value: Option<u64>| value.map_or_else(|| "–".to_owned(), int);
        let memory = match (row.vm_hwm_kib, row.map_kib) {
            (Some(hwm), Some(maps)) => format!("{} + {} maps", kib(hwm), kib(maps)),
            (Some(hwm), None) => kib(hwm),
            (None, _) => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {}{} | {} | {} | {} | {} | {:.1} | {:.2} | {} | {} | {} | {} | {:.2} |",
            row.tool.label(),
            if failed { " (failed)" } else { "" },
            opt_int(row.sent),
            opt_int(row.replies),
            opt_int(row.farm.map(|f| f.replies)),
            opt_int(row.false_downs),
            row.wall.as_secs_f64(),
            row.cpu_secs,
            row.cpu_per_1000().map_or_else(|| "–".to_owned(), sig3),
            result
                .times_less_than_fping(row)
                .map_or_else(|| "–".to_owned(), |r| format!("{}×", sig3(r))),
            if failed {
                "–".to_owned()
            } else {
                row.probes_per_second()
                    .map_or_else(|| "–".to_owned(), |r| int(r.round() as u64))
            },
            memory,
            row.cpu_fields_secs,
        );
    }
    md.push('\n');
    for row in &result.rows {
        for note in row_notes(result, row) {
            let _ = writeln!(md, "- {}: {note}", row.tool.label());
        }
    }
    md.push('\n');
    md
}

/// What the table cannot say: where a tool could not finish or keep the period, and why.
fn row_notes(result: &SizeResult, row: &Row) -> Vec<String> {
    let mut notes = Vec::new();
    match &row.outcome {
        Outcome::Finished => {}
        Outcome::Capped(after) => notes.push(format!(
            "could not finish: {} of {} probes in the {} s given, then stopped with SIGINT",
            int(row.sent.unwrap_or(0)),
            int(result.planned()),
            after.as_secs()
        )),
        Outcome::Failed(why) => notes.push(format!("failed: {why}")),
    }
    notes.extend(row.notes.iter().cloned());
    notes
}

/// 131072 -> "131,072".
pub fn int(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Three significant figures (no fewer digits before the point): 0.01234 -> "0.0123",
/// 12.345 -> "12.3", 1234.4 -> "1234".
pub fn sig3(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).max(0) as usize;
    format!("{value:.decimals$}")
}

/// KiB as MiB (or GiB), one decimal.
pub fn kib(value: u64) -> String {
    let mib = value as f64 / 1024.0;
    if mib >= 10240.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: Tool, sent: u64, cpu_secs: f64, wall_secs: u64) -> Row {
        Row {
            tool,
            command: format!("ip netns exec p {}", tool.slug()),
            outcome: Outcome::Finished,
            sent: Some(sent),
            replies: Some(sent),
            false_downs: Some(0),
            wall: Duration::from_secs(wall_secs),
            cpu_secs,
            cpu_fields_secs: cpu_secs / 2.0,
            vm_hwm_kib: Some(2048),
            map_kib: None,
            farm: Some(EchoCounters {
                requests: sent,
                replies: sent,
            }),
            notes: Vec::new(),
        }
    }

    fn result() -> SizeResult {
        let mut xdprobe = row(Tool::Xdprobe, 163_840, 1.0, 21);
        xdprobe.map_kib = Some(4096);
        let mut fping = row(Tool::Fping, 100_000, 6.0, 50);
        fping.outcome = Outcome::Capped(Duration::from_secs(50));
        fping.notes.push("cannot keep the period".into());
        let socket = Row {
            outcome: Outcome::Failed("exit status: 3: cannot open socket".into()),
            sent: None,
            replies: None,
            false_downs: None,
            farm: None,
            ..row(Tool::Socket, 0, 0.5, 1)
        };
        SizeResult {
            family: Family::V4,
            hosts: 4096,
            windows: 20,
            probes: 2,
            window_ms: 1000,
            rows: vec![xdprobe, socket, fping],
        }
    }

    #[test]
    fn ratios_are_fpings_cpu_per_probe_over_the_tools() {
        let result = result();
        let [xdprobe, socket, fping] = &result.rows[..] else {
            unreachable!()
        };
        assert_eq!(result.planned(), 163_840);
        assert_eq!(result.needed_rate(), 8192.0);
        // fping: 6 s / 100 k probes = 0.06 s per 1,000; xdprobe: 1 s / 163.84 k.
        assert!((fping.cpu_per_1000().unwrap() - 0.06).abs() < 1e-12);
        let ratio = result.times_less_than_fping(xdprobe).unwrap();
        assert!((ratio - 0.06 / (1.0 / 163.84)).abs() < 1e-9, "{ratio}");
        assert_eq!(result.times_less_than_fping(fping), Some(1.0));
        assert_eq!(result.times_less_than_fping(socket), None);
        assert_eq!(fping.probes_per_second(), Some(2000.0));
    }

    #[test]
    fn no_fping_row_means_no_ratio() {
        let mut result = result();
        result.rows.retain(|row| row.tool != Tool::Fping);
        assert_eq!(result.times_less_than_fping(&result.rows[0]), None);
    }

    #[test]
    fn table_has_a_row_per_tool_and_says_what_could_not_be_done() {
        let md = render_size(&result());
        assert!(md.starts_with("## 4,096 IPv4 hosts × 20 windows\n"), "{md}");
        assert!(md.contains("163,840 probes planned per tool; keeping the period needs 8,192"));
        assert!(md.contains(
            "| xdprobe (XDP) | 163,840 | 163,840 | 163,840 | 0 | 21.0 | 1.00 | 0.00610 | 9.83× \
             | 7,802 | 2.0 MiB + 4.0 MiB maps | 0.50 |"
        ), "{md}");
        assert!(md.contains(
            "| xdprobe --receive socket (failed) | – | – | – | – | 1.0 | 0.50 | – | – | – | 2.0 MiB | 0.25 |"
        ), "{md}");
        assert!(md.contains("| fping | 100,000 | 100,000 | 100,000 | 0 | 50.0 | 6.00 | 0.0600 | 1.00× | 2,000 | 2.0 MiB | 3.00 |"), "{md}");
        assert!(
            md.contains("- fping: could not finish: 100,000 of 163,840 probes in the 50 s given")
        );
        assert!(md.contains("- fping: cannot keep the period\n"), "{md}");
        assert!(
            md.contains("- xdprobe --receive socket: failed: exit status: 3: cannot open socket")
        );
        assert!(!md.contains("- xdprobe (XDP):"), "{md}");
    }

    #[test]
    fn the_heading_says_the_family() {
        let v6 = SizeResult {
            family: Family::V6,
            hosts: 131_072,
            ..result()
        };
        let md = render_size(&v6);
        assert!(
            md.starts_with("## 131,072 IPv6 hosts × 20 windows\n"),
            "{md}"
        );
        assert!(md.contains("5,242,880 probes planned per tool; keeping the period needs 262,144"));
    }

    #[test]
    fn document_has_machine_columns_tables_and_commands() {
        let machine = Machine {
            cpu_model: "Intel(R) Xeon(R) Processor".into(),
            cores: 2,
            mem_kib: 24 * 1024 * 1024,
            kernel: "6.18.0".into(),
            date: "2026-11-25".into(),
            fping_version: Some("fping: Version 5.1".into()),
            xdprobe_version: None,
        };
        let results = [result()];
        let farm_commands = ["ip -n xdpb-1-farm route add local 198.18.0.0/15 dev lo".to_owned()];
        let md = Document {
            invocation: "cargo xtask bench --sizes 4096",
            machine: &machine,
            farm_commands: &farm_commands,
            farm_notes: &[],
            results: &results,
        }
        .render();
        assert!(md.contains("- CPU: Intel(R) Xeon(R) Processor (2 cores)"));
        assert!(md.contains("- memory: 24.0 GiB"));
        assert!(md.contains("- kernel: 6.18.0"));
        assert!(md.contains("## What the columns mean"));
        assert!(md.contains("## 4,096 IPv4 hosts"));
        assert!(md.contains("route add local 198.18.0.0/15 dev lo\n"));
        assert!(
            md.contains("ip netns exec p xdprobe\nip netns exec p socket\nip netns exec p fping\n")
        );
    }

    #[test]
    fn reads_the_machine() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n\n\
                       processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        assert_eq!(
            parse_cpuinfo(cpuinfo),
            ("Intel(R) Xeon(R) Processor".to_owned(), 2)
        );
        assert_eq!(parse_cpuinfo("").0, "unknown");
        assert_eq!(
            parse_meminfo_total("MemTotal:       24595064 kB\nMemFree: 1 kB\n"),
            Some(24_595_064)
        );
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(131_072), "131,072");
        assert_eq!(int(5_242_880), "5,242,880");
        assert_eq!(sig3(0.012345), "0.0123");
        assert_eq!(sig3(1.0), "1.00");
        assert_eq!(sig3(12.345), "12.3");
        assert_eq!(sig3(1234.4), "1234");
        assert_eq!(kib(505_060), "493.2 MiB");
        assert_eq!(kib(24 * 1024 * 1024), "24.0 GiB");
    }
}
