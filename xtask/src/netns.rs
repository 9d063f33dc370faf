//! A set of network namespaces that is removed however xtask ends.
//!
//! Dropping [`Namespaces`] removes them (normal return, error, panic). For the ways out that
//! run no destructor — Ctrl-C, `kill`, a closed terminal — a small janitor process, started
//! before the first namespace, does the same: it waits for xtask to close its stdin, which the
//! kernel also does when xtask dies, then kills what still runs in the namespaces and deletes
//! them. It lives in its own process group, so Ctrl-C in the terminal does not reach it.
//! Drop simply closes that pipe too, so there is one cleanup path for every case.
use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Runs as `sh -c JANITOR janitor NS...`.
const JANITOR: &str = r#"
trap '' INT HUP PIPE
cat >/dev/null
for ns in "$@"; do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -n "$pids" ] && kill $pids 2>/dev/null
    ip netns del "$ns" 2>/dev/null && echo "cleanup: removed network namespace $ns" 2>/dev/null
done
exit 0
"#;

pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
    janitor: Option<Child>,
}

impl Namespaces {
    /// Creates `PREFIX-NAME` for each name, with `lo` up in each.
    pub fn create(prefix: &str, names: &[&str]) -> Result<Self> {
        let names: Vec<String> = names.iter().map(|name| format!("{prefix}{name}")).collect();
        let existing = list()?;
        if let Some(clash) = names.iter().find(|name| existing.contains(name)) {
            bail!(
                "network namespace {clash} already exists; remove it with `ip netns del {clash}`"
            );
        }
        let janitor = Command::new("sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("janitor")
            .args(&names)
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start the namespace janitor (sh)")?;
        let namespaces = Self {
            prefix: prefix.to_owned(),
            names,
            janitor: Some(janitor),
        };
        for name in &namespaces.names {
            cmd::output(Command::new("ip").args(["netns", "add", name]))?;
            cmd::output(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        }
        Ok(namespaces)
    }

    /// The full name of the namespace created for `short`.
    pub fn name(&self, short: &str) -> Result<&str> {
        let wanted = format!("{}{short}", self.prefix);
        self.names
            .iter()
            .find(|name| **name == wanted)
            .map(String::as_str)
            .with_context(|| format!("no namespace called {short}"))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let Some(mut janitor) = self.janitor.take() else {
            return;
        };
        println!("cleanup: removing network namespaces");
        // Closing the janitor's stdin is its signal to clean up.
        drop(janitor.stdin.take());
        if let Err(err) = janitor.wait() {
            eprintln!("cleanup: waiting for the namespace janitor: {err}");
        }
        match list() {
            Ok(left) => {
                for name in self.names.iter().filter(|name| left.contains(name)) {
                    eprintln!(
                        "cleanup: network namespace {name} is still there: ip netns del {name}"
                    );
                }
            }
            Err(err) => eprintln!("cleanup: cannot list network namespaces: {err:#}"),
        }
    }
}

/// Names from `ip netns list` (which prints `NAME` or `NAME (id: N)`).
pub fn list() -> Result<Vec<String>> {
    let out = cmd::output(Command::new("ip").args(["netns", "list"]))?;
    Ok(parse_list(&out))
}

fn parse_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_netns_list() {
        let out = "xdpd-12-client (id: 3)\nxdpd-12-sw\n\n";
        assert_eq!(parse_list(out), ["xdpd-12-client", "xdpd-12-sw"]);
    }
}
