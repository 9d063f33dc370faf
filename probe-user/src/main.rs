//! `xdprobe`: probes hosts with ICMP echo, counts the replies in XDP, and takes over a virtual
//! IP when the watched host goes DOWN.
//!
//! Exit codes: 0 clean stop, 2 bad usage or config, 3 system failure.

mod act;
mod cmd;
mod config;
mod failure;
mod model;
mod probe;
mod service;

use std::process::ExitCode;

use clap::Parser as _;

use crate::{
    config::flags::{Cli, Command},
    failure::Failure,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Man => return man(),
        Command::Completions { shell } => return completions(shell),
        _ => {}
    }
    let log = service::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xdprobe: error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => service::daemon::run(*args, log).await.map(|()| 0),
            Command::Monitor(mut args) => match args.cluster.take() {
                Some(config) => cmd::monitor::cluster(config, log).await,
                None => cmd::monitor::monitor(args).await,
            },
            Command::Check(args) => cmd::check::check(args),
            Command::Status(args) => cmd::status::status(args),
            Command::Reload(args) => cmd::status::reload(args),
            Command::Man | Command::Completions { .. } => Ok(0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(e)) => {
            eprintln!("xdprobe: error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::System(e)) => {
            eprintln!("xdprobe: error: {e:#}{}", permission_hint(&e));
            ExitCode::from(3)
        }
    }
}

/// Writes the man page to stdout.
fn man() -> ExitCode {
    use clap::CommandFactory as _;
    let page = clap_mangen::Man::new(Cli::command()).section("8");
    match page.render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdprobe: error: writing the man page: {e}");
            ExitCode::from(3)
        }
    }
}

/// Writes `shell`'s completion script to stdout.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory as _;
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "xdprobe",
        &mut std::io::stdout(),
    );
    ExitCode::SUCCESS
}

fn permission_hint(e: &anyhow::Error) -> &'static str {
    let denied = e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            || cause.to_string().contains("Operation not permitted")
    });
    if denied {
        " (xdprobe needs root, or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_NET_RAW)"
    } else {
        ""
    }
}
