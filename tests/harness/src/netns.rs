//! Network namespaces that are removed however the run ends.
//!
//! Dropping [`Namespaces`] removes them (normal return, error, panic). For the ways out that
//! run no destructor — Ctrl-C, `kill`, a closed terminal, a test binary killed by a timeout —
//! a small janitor process, started before the first namespace, does the same: it reads the
//! name of each namespace on its stdin before that namespace is made, waits for the end of
//! that pipe, which the kernel also brings when we die, then kills what still runs in the
//! namespaces and deletes them, newest first. It lives in its own process group, so Ctrl-C in
//! the terminal does not reach it. Drop simply closes that pipe too and waits for the
//! janitor, so there is one cleanup path for every case.

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    process::{Child, ChildStdin, Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::cmd;

/// Runs as `sh -c JANITOR janitor`; the names come on stdin, one a line.
const JANITOR: &str = r#"
trap '' INT HUP PIPE
names=
while IFS= read -r ns; do names="$ns $names"; done
for ns in $names; do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -n "$pids" ] && kill $pids 2>/dev/null
    ip netns del "$ns" 2>/dev/null && echo "cleanup: removed network namespace $ns" 2>/dev/null
done
exit 0
"#;

/// Namespaces called `PREFIX` + a short name, each with `lo` up.
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
    janitor: Child,
    /// The write end of the janitor's stdin: the names, then, closed, the signal to clean up.
    told: Option<ChildStdin>,
    narrated: bool,
}

impl Namespaces {
    /// No namespace yet; the janitor is running. Cleans up without a word (for tests).
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        Self::start(prefix, false)
    }

    /// Like [`new`](Self::new), but says on stdout what it removes (for `cargo xtask`).
    pub fn narrated(prefix: &str) -> anyhow::Result<Self> {
        Self::start(prefix, true)
    }

    /// [`narrated`](Self::narrated) namespaces `PREFIX` + each of `shorts`.
    pub fn create(prefix: &str, shorts: &[&str]) -> anyhow::Result<Self> {
        let mut namespaces = Self::narrated(prefix)?;
        for short in shorts {
            namespaces.add(short)?;
        }
        Ok(namespaces)
    }

    fn start(prefix: &str, narrated: bool) -> anyhow::Result<Self> {
        let mut janitor = Command::new("sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("janitor")
            .stdin(Stdio::piped())
            .stdout(if narrated {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start the namespace janitor (sh)")?;
        let told = janitor.stdin.take();
        Ok(Self {
            prefix: prefix.to_owned(),
            names: Vec::new(),
            janitor,
            told,
            narrated,
        })
    }

    /// Creates namespace `PREFIX` + `short` with `lo` up; returns its full name.
    pub fn add(&mut self, short: &str) -> anyhow::Result<String> {
        let name = self.full_name(short);
        if list()?.contains(&name) {
            bail!("network namespace {name} already exists; remove it with `ip netns del {name}`");
        }
        // The janitor learns the name first: nothing we make escapes it.
        let told = self
            .told
            .as_mut()
            .context("the namespaces are being removed")?;
        writeln!(told, "{name}").context("telling the namespace janitor")?;
        self.names.push(name.clone());
        cmd::run(&["ip", "netns", "add", &name])?;
        cmd::run(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// The full name of the namespace made for `short`.
    pub fn name(&self, short: &str) -> anyhow::Result<&str> {
        let wanted = self.full_name(short);
        self.names
            .iter()
            .find(|name| **name == wanted)
            .map(String::as_str)
            .with_context(|| format!("no namespace called {short}"))
    }

    /// `PREFIX` + `short`, whether or not it was made.
    pub fn full_name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// Every namespace made so far, oldest first.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if self.narrated {
            println!("cleanup: removing network namespaces");
        }
        // Closing the janitor's stdin is its signal to clean up.
        drop(self.told.take());
        if let Err(err) = self.janitor.wait() {
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
pub fn list() -> anyhow::Result<Vec<String>> {
    Ok(parse_list(&cmd::stdout(
        Command::new("ip").args(["netns", "list"]),
    )?))
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

    /// The janitor, without root: it is told names and, when the pipe closes, goes through
    /// them (deleting nothing here, as they do not exist) and exits.
    #[test]
    fn the_janitor_exits_when_its_pipe_closes() {
        let namespaces = Namespaces::new("xh-none-").expect("janitor");
        assert_eq!(namespaces.full_name("a"), "xh-none-a");
        assert!(namespaces.name("a").is_err());
        assert!(namespaces.names().is_empty());
        drop(namespaces);
    }

    mod privileged {
        use super::super::*;
        use crate::require_root;

        #[test]
        fn namespaces_go_on_drop_and_when_the_owner_is_gone() {
            require_root();
            let prefix = format!("xh{}-", std::process::id());
            let names: Vec<String> = {
                let mut namespaces = Namespaces::new(&prefix).expect("janitor");
                let a = namespaces.add("a").expect("add a");
                let b = namespaces.add("b").expect("add b");
                assert_eq!(namespaces.name("b").unwrap(), b);
                let err = namespaces.add("a").unwrap_err();
                assert!(format!("{err:#}").contains("already exists"), "{err:#}");
                let existing = list().unwrap();
                assert!(existing.contains(&a) && existing.contains(&b));
                vec![a, b]
            };
            let left = list().unwrap();
            assert!(names.iter().all(|n| !left.contains(n)), "{left:?}");

            // What the janitor does when its owner dies without a destructor: the kernel
            // closes the pipe, as dropping our end does here.
            let name = format!("{prefix}orphan");
            let mut janitor = Command::new("sh")
                .args(["-c", JANITOR, "janitor"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("janitor");
            let mut told = janitor.stdin.take().unwrap();
            writeln!(told, "{name}").unwrap();
            cmd::run(&["ip", "netns", "add", &name]).unwrap();
            assert!(list().unwrap().contains(&name));
            drop(told);
            janitor.wait().unwrap();
            assert!(!list().unwrap().contains(&name), "the janitor left {name}");
        }
    }
}
