//! `cargo xtask demo --cluster`: three xdprobe nodes and a three-member etcd cluster in a
//! throwaway namespace lab (the integration tests' cluster lab): the elected node takes the VIP
//! when the primary dies, then another node when the holder's machine dies.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use xdprobe_harness::cluster::{ClusterLab, VIP};

use crate::{cargo_cmd, cmd};

const TIMEOUT: Duration = Duration::from_secs(10);

pub fn demo(window: &str) -> Result<()> {
    if !cmd::is_root()? {
        bail!("the demo creates network namespaces and needs root; run `cargo xtask demo --cluster` as root");
    }
    let window = humantime::parse_duration(window).context("--window")?;
    let bin = cargo_cmd::build_xdprobe(false)?;
    // The lab starts the binary it finds here.
    std::env::set_var("XDPROBE_BIN", &bin);
    say("building the lab: a primary holding the VIP, three etcd members, three xdprobe nodes");
    let mut lab = ClusterLab::new(3, window, "", "")?;
    say(&format!(
        "etcd cluster up ({}); starting the nodes n1, n2, n3 with a 1 s lease",
        lab.etcd.endpoints().join(", ")
    ));
    let elected = lab.start_all()?;
    say(&format!(
        "every node sees the primary UP; {} was elected holder of the VIP {VIP}",
        lab.nodes[elected].name
    ));

    say("killing the primary: its eth0 goes down");
    let killed = Instant::now();
    lab.lab.kill("primary")?;
    let holder = lab.wait_holder(None, TIMEOUT)?;
    say(&format!(
        "a quorum said DOWN: {} took the VIP {} ms after the primary died",
        lab.nodes[holder].name,
        killed.elapsed().as_millis()
    ));

    say(&format!(
        "killing {}'s machine (daemon SIGKILLed, link down)",
        lab.nodes[holder].name
    ));
    let died = Instant::now();
    lab.kill_machine(holder)?;
    let next = lab.wait_holder(Some(holder), TIMEOUT)?;
    say(&format!(
        "its heartbeat stopped; the others revoked its lease and {} took the VIP {} ms later",
        lab.nodes[next].name,
        died.elapsed().as_millis()
    ));
    say("stopping the nodes and removing the lab");
    Ok(())
}

fn say(line: &str) {
    println!("demo: {line}");
}
