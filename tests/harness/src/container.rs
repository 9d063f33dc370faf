//! A real systemd, booted in a container: a Debian bookworm root with systemd (built once with
//! `mmdebstrap` and cached under `target/`), booted with `systemd-nspawn` in a lab namespace,
//! driven with `nsenter` into its PID 1 (there is no D-Bus on the host: the container is not
//! registered). Each container writes to an overlay of the cached root, so it starts clean and
//! leaves the cache as it was. The container is powered off and its overlay removed on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use crate::{cmd, files::TempDir};

/// The capabilities the container gets (and passes to its services): what xdprobe needs,
/// plus CAP_SYS_ADMIN for systemd's own set-up (mounts, namespaces of its units).
const CAPABILITIES: &str = "CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN,CAP_NET_RAW,CAP_SYS_ADMIN";
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the cached root lives: `target/xdprobe-container/bookworm` (the tarball next to it).
fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("xdprobe-container")
}

/// The cached root, built (about 15 s from the Debian mirror) if it is not there yet.
pub fn cached_root() -> anyhow::Result<PathBuf> {
    let dir = cache_dir();
    let root = dir.join("bookworm");
    if root.join("usr/lib/systemd/systemd").is_file() {
        return Ok(root);
    }
    for (program, package) in [
        ("/usr/bin/mmdebstrap", "mmdebstrap"),
        ("/usr/bin/systemd-nspawn", "systemd-container"),
    ] {
        ensure!(
            Path::new(program).is_file(),
            "{program} not found: install Debian's {package} (`cargo xtask setup` does)"
        );
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tar = dir.join("bookworm.tar");
    cmd::output(
        Command::new("mmdebstrap")
            .args(["--quiet", "--variant=minbase"])
            .arg("--include=systemd,systemd-sysv,dbus,iproute2,procps")
            .arg("bookworm")
            .arg(&tar),
    )
    .context("building the container root with mmdebstrap (needs the Debian mirror)")?;
    let partial = dir.join("bookworm.partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    cmd::output(
        Command::new("tar")
            .arg("-C")
            .arg(&partial)
            .arg("-xf")
            .arg(&tar),
    )?;
    fs::rename(&partial, &root).context("moving the container root into place")?;
    let _ = fs::remove_file(&tar);
    Ok(root)
}

/// A booted container; see the module documentation.
pub struct Container {
    nspawn: Option<Child>,
    pid1: u32,
    merged: PathBuf,
    /// The overlay's upper and work directories, and its mount point.
    _dir: TempDir,
}

impl Container {
    /// Boots the cached root in the network namespace `ns` (a lab host's; its interfaces are
    /// the container's), and returns once `systemctl is-system-running` says `running`.
    pub fn boot(ns: &str) -> anyhow::Result<Self> {
        let lower = cached_root()?;
        let dir = TempDir::new("container");
        let (upper, work, merged) = (dir.path("upper"), dir.path("work"), dir.path("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d)?;
        }
        cmd::output(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    upper.display(),
                    work.display()
                ))
                .arg(&merged),
        )
        .context("mounting the container's overlay")?;
        let log = fs::File::create(dir.path("boot.log"))?;
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&merged)
            .args(["--boot", "--register=no", "--keep-unit", "--quiet"])
            .arg(format!("--network-namespace-path=/run/netns/{ns}"))
            .arg(format!("--capability={CAPABILITIES}"))
            .arg("--system-call-filter=bpf perf_event_open")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting systemd-nspawn")?;
        let mut container = Self {
            pid1: 0,
            nspawn: Some(nspawn),
            merged,
            _dir: dir,
        };
        container.wait_running()?;
        Ok(container)
    }

    /// Finds the container's PID 1 and waits for systemd to finish booting.
    fn wait_running(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let nspawn = self.nspawn.as_ref().map(Child::id).unwrap_or_default();
        let mut last = String::new();
        while Instant::now() < deadline {
            if self.pid1 == 0 {
                let children = cmd::stdout(Command::new("pgrep").args(["-P", &nspawn.to_string()]))
                    .unwrap_or_default();
                self.pid1 = children
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(0);
            }
            if self.pid1 != 0 {
                let out = self.exec(&["systemctl", "is-system-running"])?;
                last = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if last == "running" {
                    return Ok(());
                }
                if last == "degraded" {
                    let failed = self.exec(&["systemctl", "--failed", "--no-legend"])?;
                    bail!(
                        "the container booted degraded: {}",
                        String::from_utf8_lossy(&failed.stdout)
                    );
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the container did not boot within {BOOT_TIMEOUT:?} (last state {last:?}); its log:\n{}",
            fs::read_to_string(self._dir.path("boot.log")).unwrap_or_default()
        )
    }

    /// Runs `args` inside the container (all its namespaces, as root); its output, whatever
    /// its exit status.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a"])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in the container"))
    }

    /// Runs `args` inside the container; its stdout, or an error with its output unless it
    /// exits 0.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.exec(args)?;
        ensure!(
            out.status.success(),
            "{args:?} in the container failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A path inside the container, as seen from the host (not under `/tmp`, which the
    /// container mounts anew).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.merged.join(inside.trim_start_matches('/'))
    }

    /// Writes `text` to `inside` in the container.
    pub fn write(&self, inside: &str, text: &[u8]) -> anyhow::Result<()> {
        let path = self.host_path(inside);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.pid1 != 0 {
            let _ = self.exec(&["systemctl", "poweroff", "--no-block"]);
        }
        if let Some(mut nspawn) = self.nspawn.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(nspawn.try_wait(), Ok(Some(_))) {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = nspawn.kill();
            let _ = nspawn.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}
