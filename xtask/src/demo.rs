//! `cargo xtask demo`: a live virtual-IP takeover, narrated, in a throwaway namespace lab.
use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use xdprobe_harness::{Daemon, Lab};

use crate::{
    cargo_cmd, cmd,
    lab::{self, Stack, CLIENT, IFACE, PRIMARY, STANDBY},
};

/// How long xdprobe probes the healthy primary before we kill it.
const WARM_UP: Duration = Duration::from_secs(3);
const TAKEOVER_POLL: Duration = Duration::from_millis(5);
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

pub fn demo(window: &str, ipv6: bool) -> Result<()> {
    if !cmd::is_root()? {
        bail!("the demo creates network namespaces and needs root; run `cargo xtask demo` as root");
    }
    let stack = if ipv6 { lab::IPV6 } else { lab::IPV4 };
    let bin = cargo_cmd::build_xdprobe(false)?;

    say(&format!(
        "building the lab: namespaces {}{{sw,primary,standby,client}}, one bridge, three hosts",
        lab::prefix()
    ));
    let lab = lab::build(&stack)?;
    let vip = stack.vip;
    say(&format!(
        "primary {} holds the VIP {vip}; standby is {}, client {}",
        stack.primary, stack.standby, stack.client
    ));

    // Declared after `lab`, so it is dropped (stopped) before the lab is torn down.
    let mut xdprobe = start_xdprobe(&lab, &bin, &stack, window)?;
    say(&format!(
        "xdprobe (pid {}) runs on the standby and probes the primary; waiting {}s",
        xdprobe.pid(),
        WARM_UP.as_secs()
    ));
    xdprobe.watch_for(WARM_UP)?;

    say(&format!(
        "the client pings the VIP {vip}: the primary answers"
    ));
    ping_vip(&lab, &stack).context("the VIP does not answer before the failover")?;

    say("killing the primary: its eth0 goes down");
    lab.ip(PRIMARY, &["link", "set", IFACE, "down"])?;
    let killed = Instant::now();
    let took = wait_for_vip_on_standby(&lab, &stack, &mut xdprobe, killed)?;
    say(&format!(
        "the standby took over the VIP {} ms after the primary died",
        took.as_millis()
    ));

    if ipv6 {
        say(&format!(
            "the standby's {IFACE} now (the VIP is added nodad):"
        ));
    } else {
        say(&format!(
            "the standby's {IFACE} now (note the {} label):",
            lab::VIP_LABEL
        ));
    }
    print!(
        "{}",
        lab.ip(STANDBY, &[stack.flag, "addr", "show", "dev", IFACE])?
    );

    say(if ipv6 {
        "the client pings again: the standby's unsolicited neighbour advertisement already moved its neighbour entry"
    } else {
        "the client pings again: the standby's gratuitous ARP already moved its neighbour entry"
    });
    ping_vip(&lab, &stack).context("the VIP does not answer after the takeover")?;
    show_vip_owner(&lab, &stack)?;

    say("stopping xdprobe with SIGTERM");
    let (status, _log) = xdprobe.stop()?;
    say(&format!("xdprobe exited ({status})"));
    if !status.success() {
        bail!("xdprobe did not exit cleanly on SIGTERM ({status})");
    }
    Ok(())
}

fn say(line: &str) {
    println!("demo: {line}");
}

fn start_xdprobe(lab: &Lab, bin: &Path, stack: &Stack, window: &str) -> Result<Daemon> {
    let mut command = lab.command(STANDBY, bin);
    command.args([
        "run",
        "--iface",
        IFACE,
        "--watch",
        stack.primary,
        "--vip",
        &stack.vip_cidr(),
        "--window",
        window,
    ]);
    say(&format!(
        "starting on the standby: {}",
        cmd::describe(&command)
    ));
    Daemon::spawn(command, "xdprobe", true)
}

fn ping_vip(lab: &Lab, stack: &Stack) -> Result<()> {
    let mut ping = lab.command(CLIENT, "ping");
    ping.args(["-c", "3", "-i", "0.2", "-W", "1", stack.vip]);
    let status = cmd::status(&mut ping)?;
    if !status.success() {
        bail!("`{}` failed ({status})", cmd::describe(&ping));
    }
    Ok(())
}

/// Polls the standby's addresses until the VIP shows up; returns the time since `since`.
fn wait_for_vip_on_standby(
    lab: &Lab,
    stack: &Stack,
    xdprobe: &mut Daemon,
    since: Instant,
) -> Result<Duration> {
    loop {
        let addrs = lab.ip(STANDBY, &[stack.flag, "addr", "show", "dev", IFACE])?;
        if lab::has_addr(&addrs, stack.vip) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > TAKEOVER_TIMEOUT {
            bail!(
                "the standby did not take over {} within {}s",
                stack.vip,
                TAKEOVER_TIMEOUT.as_secs()
            );
        }
        xdprobe.ensure_running()?;
        thread::sleep(TAKEOVER_POLL);
    }
}

/// Shows that the client now reaches the VIP at the standby's MAC address.
fn show_vip_owner(lab: &Lab, stack: &Stack) -> Result<()> {
    let neigh = lab.ip(CLIENT, &[stack.flag, "neigh", "show", stack.vip])?;
    let standby = lab.ip(STANDBY, &["-br", "link", "show", "dev", IFACE])?;
    let client_sees = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1);
    let standby_mac = standby.split_whitespace().nth(2);
    say(&format!(
        "the client reaches the VIP at {}; the standby's {IFACE} is {}",
        client_sees.unwrap_or("?"),
        standby_mac.unwrap_or("?")
    ));
    Ok(())
}
