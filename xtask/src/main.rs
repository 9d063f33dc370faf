//! Developer tasks for xdprobe: `cargo xtask setup | build | run | test | layers | demo | bench | dist`.
//!
//! Every command first runs `setup`, which installs whatever the build is missing.
mod bench;
mod cargo_cmd;
mod cmd;
mod demo;
mod demo_cluster;
mod dist;
mod lab;
mod layers;
mod run;
mod setup;
mod testsuite;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "Build, run, test and demo xdprobe",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (Debian packages, nightly rust-src,
    /// bpf-linker); quick when everything is there.
    Setup,
    /// Build xdprobe, with its eBPF program.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build xdprobe and run it as root with the given arguments; exits with xdprobe's code.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for xdprobe (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Formatting, clippy, the layers, unit tests, then the integration tests (as root).
    Test,
    /// Check that probe-user's modules import only from the layers below their own.
    Layers,
    /// Show a live virtual-IP takeover between network namespaces.
    Demo {
        /// The failure-detection window passed to xdprobe.
        #[arg(long, default_value = "100ms")]
        window: String,
        /// The same in IPv6: the primary, the standby, the client and the VIP in 2001:db8::/64.
        #[arg(long, conflicts_with = "cluster")]
        ipv6: bool,
        /// Three xdprobe nodes agreeing through a three-member etcd cluster: the elected node
        /// takes over when the primary dies, then another when that node's machine dies.
        #[arg(long)]
        cluster: bool,
    },
    /// Measure xdprobe against fping (and against itself receiving on a socket) over up to
    /// 131,072 IPv4 and 131,072 IPv6 hosts in a namespace farm; prints the tables and writes
    /// BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Build the Debian package (binary, systemd unit, example config, man page) into
    /// target/dist/.
    Dist {
        /// Package the debug build (quicker; what the test suite installs).
        #[arg(long)]
        debug: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn execute(task: Task) -> anyhow::Result<()> {
    setup::setup()?;
    match task {
        Task::Setup => {
            println!("setup: every tool the build and the tests need is installed");
            Ok(())
        }
        Task::Build { release } => cargo_cmd::build_xdprobe(release).map(drop),
        Task::Run { release, args } => run::run(release, &args),
        Task::Test => testsuite::test(),
        Task::Layers => layers::layers(),
        Task::Demo {
            window,
            cluster: true,
            ..
        } => demo_cluster::demo(&window),
        Task::Demo { window, ipv6, .. } => demo::demo(&window, ipv6),
        Task::Bench(args) => bench::bench(args),
        Task::Dist { debug } => dist::dist(debug).map(drop),
    }
}
