//! Running the operator's hooks (`--on-down`, `--on-up`, `--on-claim`, `--on-release`) on
//! failover events; which hook is which is `config::hooks`.
//!
//! A hook is run directly, never through a shell: the command line is split once, like a shell
//! would split it, and the facts of the event are appended as separate arguments. Nothing the
//! prober learnt from the network (or from anywhere else) can therefore be interpreted as shell
//! syntax. The facts are also in the environment, for hooks that prefer to read them there.
//!
//! Hooks must never delay a takeover: [`fire`] only spawns a task and returns. That task
//! logs the hook's output line by line as it arrives, and kills the hook together with
//! everything it started (its whole process group) when it overruns its timeout.

use std::{
    fmt, io,
    net::IpAddr,
    os::unix::process::ExitStatusExt as _,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader},
    process::{Child, Command},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, error, info, instrument::WithSubscriber as _, warn};

use crate::{
    config::hooks::{Hook, HookEvent, Hooks},
    model::health::State,
};

/// All hook logging goes here, whatever module the daemon later moves this code to, so that
/// operators can filter on it (`RUST_LOG=xdprobe::hooks=debug`).
const TARGET: &str = "xdprobe::hooks";

/// Output lines longer than this are logged in pieces, so that a hook printing without newlines
/// cannot make the daemon buffer without bound.
const MAX_LINE: usize = 4096;

/// How long, after a hook has ended, its output is still awaited before its outcome is reported.
/// What the hook itself wrote is already in the pipe by then; only something it left running in
/// the background can hold the pipe open longer, and that must not hold up the outcome. Such
/// output is still logged, by the reader tasks, which run on until the pipe closes.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// The facts of an event, handed to its hook as arguments and environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookFacts {
    pub event: HookEvent,
    /// The monitored host the event is about.
    pub host: IpAddr,
    /// The virtual IP, as configured (e.g. `192.0.2.100/24`).
    pub vip: String,
    /// The host's state after the event (`DOWN` to the hook).
    pub state: State,
    /// The probe window in which the event was decided.
    pub window: u32,
}

/// How a hook ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// It exited with this status.
    Exited(i32),
    /// It was killed by this signal (by someone else: our own kill on timeout is `TimedOut`).
    Signalled(i32),
    /// It overran the timeout, and was killed together with its process group.
    TimedOut,
    /// It could not be run (missing program, not executable, …), or was lost track of.
    FailedToStart(String),
}

impl fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookOutcome::Exited(code) => write!(f, "exited with status {code}"),
            HookOutcome::Signalled(signal) => write!(f, "was killed by signal {signal}"),
            HookOutcome::TimedOut => f.write_str("timed out and was killed with its process group"),
            HookOutcome::FailedToStart(error) => write!(f, "could not be started: {error}"),
        }
    }
}

/// Starts the hook for `facts.event`, if one is configured, in its own task; returns at once.
/// The handle resolves when the hook has finished or was killed; callers may drop it.
///
/// Hooks fired one after the other run concurrently, in no guaranteed order. Their logging
/// goes to the subscriber that is current here, even from another worker thread.
/// Must be called inside a Tokio runtime; outside one, the hook is not run (and that is
/// logged), rather than panicking in the middle of a failover.
pub fn fire(hooks: &Hooks, facts: HookFacts) -> Option<JoinHandle<HookOutcome>> {
    let hook = hooks.hook_for(facts.event)?.clone();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        error!(target: TARGET, hook = %facts.event, program = %hook.program,
            "hook not run: no async runtime to run it on");
        return None;
    };
    Some(runtime.spawn(run(hook, facts, hooks.timeout).with_current_subscriber()))
}

/// The arguments a hook is run with: its own, then the facts,
/// `<event> <host> <vip> <state> <window>`.
fn command_args(hook: &Hook, facts: &HookFacts) -> Vec<String> {
    let mut args = hook.args.clone();
    args.extend([
        facts.event.to_string(),
        facts.host.to_string(),
        facts.vip.clone(),
        facts.state.to_string(),
        facts.window.to_string(),
    ]);
    args
}

/// The variables added to the daemon's environment for a hook: the same facts, by name.
fn command_env(facts: &HookFacts) -> [(&'static str, String); 5] {
    [
        ("XDPROBE_EVENT", facts.event.to_string()),
        ("XDPROBE_HOST", facts.host.to_string()),
        ("XDPROBE_VIP", facts.vip.clone()),
        ("XDPROBE_STATE", facts.state.to_string()),
        ("XDPROBE_WINDOW", facts.window.to_string()),
    ]
}

/// Runs one hook to its end (or its timeout) and logs how it went.
async fn run(hook: Hook, facts: HookFacts, timeout: Duration) -> HookOutcome {
    let event = facts.event;
    let args = command_args(&hook, &facts);
    debug!(target: TARGET, hook = %event, program = %hook.program, ?args, "starting hook");
    let started = Instant::now();

    let mut command = Command::new(&hook.program);
    command
        .args(&args)
        .envs(command_env(&facts))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that on timeout we can kill whatever the hook started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let outcome = HookOutcome::FailedToStart(e.to_string());
            report(&hook, event, &outcome, started.elapsed());
            return outcome;
        }
    };
    let group = ProcessGroup::of(&child);

    let readers: Vec<JoinHandle<()>> = [
        child
            .stdout
            .take()
            .map(|out| spawn_logged(log_output(out, event, "stdout"))),
        child
            .stderr
            .take()
            .map(|err| spawn_logged(log_output(err, event, "stderr"))),
    ]
    .into_iter()
    .flatten()
    .collect();

    let outcome = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => outcome_of(status),
        // Only if something else reaped our child (e.g. SIGCHLD set to SIG_IGN).
        Ok(Err(e)) => HookOutcome::FailedToStart(format!("lost track of the hook: {e}")),
        Err(_elapsed) => {
            if let Err(e) = group.kill() {
                warn!(target: TARGET, hook = %event, program = %hook.program, error = %e,
                    "cannot kill the hook's process group; killing the hook alone");
                // Best effort: the wait below tells whether it worked.
                let _ = child.start_kill();
            }
            // Reap it, so that no zombie is left behind.
            if let Err(e) = child.wait().await {
                warn!(target: TARGET, hook = %event, program = %hook.program, error = %e,
                    "cannot reap the killed hook");
            }
            HookOutcome::TimedOut
        }
    };
    // Reaped: from here on its process group id may be reused, so never kill it.
    group.disarm();
    let elapsed = started.elapsed();

    // Log the rest of its output before its outcome; dropping a reader that overruns the grace
    // only detaches it, it keeps logging until the pipe closes.
    let _ = tokio::time::timeout(OUTPUT_GRACE, async {
        for reader in readers {
            let _ = reader.await;
        }
    })
    .await;

    report(&hook, event, &outcome, elapsed);
    outcome
}

/// Spawns `task` so that it logs to the same subscriber as the task spawning it.
fn spawn_logged(task: impl std::future::Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(task.with_current_subscriber())
}

/// wait(2) reports either an exit status or the signal that ended the process.
fn outcome_of(status: ExitStatus) -> HookOutcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => HookOutcome::Exited(code),
        (None, Some(signal)) => HookOutcome::Signalled(signal),
        (None, None) => HookOutcome::FailedToStart(format!("unexpected wait status {status}")),
    }
}

/// Logs how a hook ended: at info if it succeeded, otherwise at warn, since the operator's
/// action (moving a route, paging someone) may then not have happened.
fn report(hook: &Hook, event: HookEvent, outcome: &HookOutcome, elapsed: Duration) {
    if *outcome == HookOutcome::Exited(0) {
        info!(target: TARGET, hook = %event, program = %hook.program, ?elapsed, "hook {outcome}");
    } else {
        warn!(target: TARGET, hook = %event, program = %hook.program, ?elapsed, "hook {outcome}");
    }
}

/// Logs one of a hook's output streams, line by line, as the lines arrive.
async fn log_output(output: impl AsyncRead + Unpin, event: HookEvent, stream: &'static str) {
    let logged = forward_lines(output, |line| {
        info!(target: TARGET, hook = %event, stream, "{line}");
    })
    .await;
    if let Err(e) = logged {
        warn!(target: TARGET, hook = %event, stream, error = %e, "cannot read the hook's output");
    }
}

/// Hands `emit` each line of `output` (without its line ending) until end of file. Invalid
/// UTF-8 is replaced rather than dropped, and overlong lines come in pieces of `MAX_LINE` bytes.
async fn forward_lines(
    output: impl AsyncRead + Unpin,
    mut emit: impl FnMut(&str),
) -> io::Result<()> {
    let mut reader = BufReader::new(output);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if read == 0 {
            return Ok(());
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        emit(&String::from_utf8_lossy(line));
    }
}

/// A running hook's process group: killed when dropped while still armed, so that a hook and
/// what it started do not outlive their supervising task (e.g. when the runtime shuts down;
/// `kill_on_drop` alone would kill only the hook itself).
struct ProcessGroup {
    pgid: Option<libc::pid_t>,
}

impl ProcessGroup {
    /// The group of a hook spawned as its own group leader (`process_group(0)`): its pid.
    fn of(child: &Child) -> Self {
        let pgid = child.id().and_then(|id| libc::pid_t::try_from(id).ok());
        // 0 and 1 would make `-pgid` mean "our own group" or "every process": never signal those.
        ProcessGroup {
            pgid: pgid.filter(|&pgid| pgid > 1),
        }
    }

    /// Sends SIGKILL to every process in the group.
    fn kill(&self) -> io::Result<()> {
        let Some(pgid) = self.pgid else {
            return Err(io::Error::other("the hook's process group is unknown"));
        };
        // `pgid` is the pid of a child we spawned as leader of its own group and have not
        // reaped yet (`disarm` is called right after reaping), so the id still names that group
        // and no other. It is > 1, so it can mean neither our own group (0) nor every process we
        // may signal (-1).
        killpg(Pid::from_raw(pgid), Signal::SIGKILL).map_err(io::Error::from)
    }

    /// To be called once the leader has been reaped: its id may then be reused.
    fn disarm(mut self) {
        self.pgid = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.pgid.is_some() {
            // Best effort: nothing can be done about a failure while dropping.
            let _ = self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        os::unix::fs::PermissionsExt as _,
        path::{Path, PathBuf},
        sync::{Arc, Mutex, OnceLock},
    };

    use tokio::sync::RwLock;
    use tracing::{field::Field, Dispatch, Event, Level, Subscriber};
    use tracing_subscriber::{layer::Context, prelude::*, Layer};

    use super::*;

    /// Exec fails with ETXTBSY while any process holds the file open for writing, and a child
    /// being forked by another test at the moment we write a script inherits our descriptor
    /// until it execs. So scripts are written only while no test is starting a hook.
    static SPAWNING: RwLock<()> = RwLock::const_new(());

    /// A temporary directory for one test, removed when the test ends.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xdprobe-hooks-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// Writes an executable `#!/bin/sh` script.
        async fn script(&self, name: &str, body: &str) -> PathBuf {
            let path = self.path(name);
            let _no_spawning = SPAWNING.write().await;
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn hook(program: &Path, args: &[&str]) -> Hook {
        Hook {
            program: program.to_string_lossy().into_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn hooks(event: HookEvent, hook: Hook, timeout: Duration) -> Hooks {
        let mut hooks = Hooks {
            timeout,
            ..Hooks::default()
        };
        match event {
            HookEvent::Down => hooks.on_down = Some(hook),
            HookEvent::Up => hooks.on_up = Some(hook),
            HookEvent::Claim => hooks.on_claim = Some(hook),
            HookEvent::Release => hooks.on_release = Some(hook),
            HookEvent::Elected
            | HookEvent::LostLease
            | HookEvent::Fenced
            | HookEvent::HandedOver => hooks.on_cluster = Some(hook),
        }
        hooks
    }

    fn hooks_for_release(hook: Hook) -> Hooks {
        hooks(HookEvent::Release, hook, Duration::from_secs(5))
    }

    fn facts(event: HookEvent) -> HookFacts {
        HookFacts {
            event,
            host: IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
            vip: "192.0.2.100/24".into(),
            state: State::Down,
            window: 42,
        }
    }

    /// Fires the hook for `facts.event` and waits for its outcome.
    async fn fire_and_wait(hooks: &Hooks, facts: HookFacts) -> HookOutcome {
        let _spawning = SPAWNING.read().await;
        fire(hooks, facts)
            .expect("a hook is configured")
            .await
            .unwrap()
    }

    /// Gone, or a zombie waiting for a parent that may never reap it (PID 1 in a container).
    fn is_gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    // --- Logging, captured per test rather than through a global subscriber. ---

    #[derive(Clone, Debug)]
    struct Record {
        target: String,
        level: Level,
        fields: BTreeMap<String, String>,
    }

    impl Record {
        fn field(&self, name: &str) -> &str {
            self.fields.get(name).map_or("", String::as_str)
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<Record>>>);

    impl Captured {
        /// A capturing dispatcher, to be made the default around `fire`.
        ///
        /// tracing caches per call site, for the whole process, whether anyone wants its events.
        /// While at most one dispatcher exists, that is decided by the default dispatcher of the
        /// thread that reaches the call site first: a concurrent test without a subscriber would
        /// cache "never", and this capture would miss events. A second dispatcher alive for the
        /// whole run makes tracing ask every dispatcher instead, so ours is always asked.
        fn install() -> (Captured, Dispatch) {
            static ANCHOR: OnceLock<Dispatch> = OnceLock::new();
            ANCHOR.get_or_init(|| Dispatch::new(tracing::subscriber::NoSubscriber::default()));
            let captured = Captured::default();
            let dispatch = Dispatch::new(tracing_subscriber::registry().with(captured.clone()));
            (captured, dispatch)
        }

        fn records(&self) -> Vec<Record> {
            self.0.lock().unwrap().clone()
        }

        fn output_line(&self, stream: &str, message: &str) -> Option<Record> {
            self.records()
                .into_iter()
                .find(|r| r.field("stream") == stream && r.field("message") == message)
        }
    }

    #[derive(Default)]
    struct Fields(BTreeMap<String, String>);

    impl tracing::field::Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().into(), value.into());
        }

        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.insert(field.name().into(), format!("{value:?}"));
        }
    }

    impl<S: Subscriber> Layer<S> for Captured {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            self.0.lock().unwrap().push(Record {
                target: event.metadata().target().into(),
                level: *event.metadata().level(),
                fields: fields.0,
            });
        }
    }

    #[test]
    fn facts_follow_the_hooks_own_arguments() {
        let hook = Hook::parse("/usr/local/bin/move-route --table 'main 2'").unwrap();
        assert_eq!(
            command_args(&hook, &facts(HookEvent::Claim)),
            [
                "--table",
                "main 2",
                "claim",
                "192.0.2.1",
                "192.0.2.100/24",
                "DOWN",
                "42"
            ]
        );
    }

    #[test]
    fn facts_are_in_the_environment() {
        let env = command_env(&HookFacts {
            state: State::Up,
            window: 7,
            ..facts(HookEvent::Up)
        });
        assert_eq!(
            env.map(|(k, v)| format!("{k}={v}")),
            [
                "XDPROBE_EVENT=up",
                "XDPROBE_HOST=192.0.2.1",
                "XDPROBE_VIP=192.0.2.100/24",
                "XDPROBE_STATE=UP",
                "XDPROBE_WINDOW=7",
            ]
        );
    }

    #[tokio::test]
    async fn output_is_split_into_lines() {
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\r\ntwo\n\nbad \u{fffd}\n{long}\nlast without newline");
        let mut input = input.into_bytes();
        // An invalid byte, in place of the replacement character.
        let at = input
            .windows(3)
            .position(|w| w == "\u{fffd}".as_bytes())
            .unwrap();
        input.splice(at..at + 3, [0xff]);

        let mut lines = Vec::new();
        forward_lines(&input[..], |line| lines.push(line.to_string()))
            .await
            .unwrap();
        assert_eq!(
            lines,
            [
                "one",
                "two",
                "",
                "bad \u{fffd}",
                &long[..MAX_LINE],
                "x".repeat(10).as_str(),
                "last without newline"
            ]
        );
    }

    // --- Real processes. ---

    #[tokio::test]
    async fn hooks_get_the_facts_as_arguments_and_environment() {
        let dir = TempDir::new("facts");
        let out = dir.path("out");
        let script = dir
            .script(
                "record",
                r#"out="$1"
for arg in "$@"; do printf 'arg=%s\n' "$arg"; done > "$out"
printf 'XDPROBE_EVENT=%s\nXDPROBE_HOST=%s\nXDPROBE_VIP=%s\nXDPROBE_STATE=%s\nXDPROBE_WINDOW=%s\n' \
    "$XDPROBE_EVENT" "$XDPROBE_HOST" "$XDPROBE_VIP" "$XDPROBE_STATE" "$XDPROBE_WINDOW" >> "$out"
printf 'PATH=%s\n' "$PATH" >> "$out"
printf 'stdin=%s\n' "$(readlink /proc/$$/fd/0)" >> "$out"
printf 'pid=%s pgid=%s\n' "$$" "$(cut -d' ' -f5 /proc/$$/stat)" >> "$out""#,
            )
            .await;
        let out_arg = out.to_string_lossy().into_owned();
        let hooks = hooks(
            HookEvent::Claim,
            hook(&script, &[&out_arg, "own arg"]),
            Duration::from_secs(5),
        );

        assert_eq!(
            fire_and_wait(&hooks, facts(HookEvent::Claim)).await,
            HookOutcome::Exited(0)
        );

        let recorded = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = recorded.lines().collect();
        let args: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("arg="))
            .collect();
        assert_eq!(
            args,
            [
                &out_arg,
                "own arg",
                "claim",
                "192.0.2.1",
                "192.0.2.100/24",
                "DOWN",
                "42"
            ]
        );
        for expected in [
            "XDPROBE_EVENT=claim",
            "XDPROBE_HOST=192.0.2.1",
            "XDPROBE_VIP=192.0.2.100/24",
            "XDPROBE_STATE=DOWN",
            "XDPROBE_WINDOW=42",
            "stdin=/dev/null",
        ] {
            assert!(
                lines.contains(&expected),
                "{expected:?} not in:\n{recorded}"
            );
        }
        // The rest of the environment is kept.
        if let Ok(path) = std::env::var("PATH") {
            assert!(
                lines.contains(&format!("PATH={path}").as_str()),
                "{recorded}"
            );
        }
        // Its own process group.
        let ids = lines.iter().find_map(|l| l.strip_prefix("pid=")).unwrap();
        let (pid, pgid) = ids.split_once(" pgid=").unwrap();
        assert_eq!(pid, pgid);
    }

    #[tokio::test]
    async fn overrunning_hook_is_killed_with_its_process_group() {
        let dir = TempDir::new("timeout");
        let pid_file = dir.path("child.pid");
        let script = dir
            .script("linger", "sleep 1000 &\necho $! > \"$1\"\nwait")
            .await;
        let pid_arg = pid_file.to_string_lossy().into_owned();
        let hooks = hooks(
            HookEvent::Down,
            hook(&script, &[&pid_arg]),
            Duration::from_millis(200),
        );

        let started = std::time::Instant::now();
        assert_eq!(
            fire_and_wait(&hooks, facts(HookEvent::Down)).await,
            HookOutcome::TimedOut
        );
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");

        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !is_gone(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(is_gone(pid), "the hook's child {pid} survived the timeout");
    }

    #[tokio::test]
    async fn aborted_hook_is_killed_with_its_process_group() {
        let dir = TempDir::new("aborted");
        let pid_file = dir.path("child.pid");
        let script = dir
            .script("linger", "sleep 1000 &\necho $! > \"$1\"\nwait")
            .await;
        let pid_arg = pid_file.to_string_lossy().into_owned();
        let hooks = hooks(
            HookEvent::Down,
            hook(&script, &[&pid_arg]),
            Duration::from_secs(60),
        );

        let _spawning = SPAWNING.read().await;
        let handle = fire(&hooks, facts(HookEvent::Down)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&pid_file).map_or(true, |pid| !pid.ends_with('\n'))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // As when the daemon's runtime shuts down: the supervising task is dropped.
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());

        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !is_gone(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            is_gone(pid),
            "the hook's child {pid} survived its supervisor"
        );
    }

    #[tokio::test]
    async fn overrunning_program_times_out_and_is_reaped() {
        let dir = TempDir::new("reaped");
        let pid_file = dir.path("pid");
        // The facts would be arguments to sleep, so a script takes them and becomes sleep.
        let script = dir
            .script("sleeper", "echo $$ > \"$1\"\nexec sleep 1000")
            .await;
        let pid_arg = pid_file.to_string_lossy().into_owned();
        let hooks = hooks(
            HookEvent::Up,
            hook(&script, &[&pid_arg]),
            Duration::from_millis(200),
        );

        let started = std::time::Instant::now();
        assert_eq!(
            fire_and_wait(&hooks, facts(HookEvent::Up)).await,
            HookOutcome::TimedOut
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );

        // Not even a zombie: we reaped it.
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "sleep {} is left",
            pid.trim()
        );
    }

    #[tokio::test]
    async fn exit_status_and_signal_are_reported() {
        let dir = TempDir::new("status");
        let three = dir.script("three", "exit 3").await;
        let signalled = dir.script("signalled", "kill -TERM $$").await;

        let hooks = hooks_for_release(hook(&three, &[]));
        assert_eq!(
            fire_and_wait(&hooks, facts(HookEvent::Release)).await,
            HookOutcome::Exited(3)
        );

        let hooks = hooks_for_release(hook(&signalled, &[]));
        assert_eq!(
            fire_and_wait(&hooks, facts(HookEvent::Release)).await,
            HookOutcome::Signalled(libc::SIGTERM)
        );
    }

    #[tokio::test]
    async fn hooks_that_cannot_start_are_reported() {
        let dir = TempDir::new("nostart");
        let missing = dir.path("missing");
        let hooks = hooks_for_release(hook(&missing, &[]));
        match fire_and_wait(&hooks, facts(HookEvent::Release)).await {
            HookOutcome::FailedToStart(error) => assert!(error.contains("No such file"), "{error}"),
            other => panic!("{other:?}"),
        }

        let not_executable = dir.script("not-executable", "exit 0").await;
        std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
        let hooks = hooks_for_release(hook(&not_executable, &[]));
        match fire_and_wait(&hooks, facts(HookEvent::Release)).await {
            HookOutcome::FailedToStart(error) => {
                assert!(error.contains("ermission denied"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn fire_returns_at_once() {
        let dir = TempDir::new("at-once");
        let script = dir.script("sleeper", "exec sleep 1000").await;
        let hooks = hooks(
            HookEvent::Claim,
            hook(&script, &[]),
            Duration::from_millis(300),
        );
        let _spawning = SPAWNING.read().await;
        let started = std::time::Instant::now();
        let handle = fire(&hooks, facts(HookEvent::Claim)).unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_millis(50), "{elapsed:?}");
        assert!(!handle.is_finished());
        assert_eq!(handle.await.unwrap(), HookOutcome::TimedOut);
    }

    #[tokio::test]
    async fn no_hook_configured_runs_nothing() {
        let hooks = hooks(
            HookEvent::Claim,
            hook(Path::new("/bin/true"), &[]),
            Duration::from_secs(5),
        );
        assert!(fire(&hooks, facts(HookEvent::Release)).is_none());
    }

    #[tokio::test]
    async fn output_is_logged_as_it_arrives() {
        let dir = TempDir::new("output");
        let go = dir.path("go");
        let script = dir
            .script(
                "chatty",
                "echo early\necho 'on stderr' >&2\nwhile [ ! -e \"$1\" ]; do sleep 0.02; done\necho late\nexit 5",
            )
            .await;
        let go_arg = go.to_string_lossy().into_owned();
        let hooks = hooks(
            HookEvent::Down,
            hook(&script, &[&go_arg]),
            Duration::from_secs(10),
        );

        let (captured, dispatch) = Captured::install();
        let _spawning = SPAWNING.read().await;
        let handle =
            tracing::dispatcher::with_default(&dispatch, || fire(&hooks, facts(HookEvent::Down)))
                .unwrap();

        // The hook is still waiting for us, yet its first lines are already in the log.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while (captured.output_line("stdout", "early").is_none()
            || captured.output_line("stderr", "on stderr").is_none())
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!handle.is_finished());
        let early = captured
            .output_line("stdout", "early")
            .expect("stdout line logged while the hook runs");
        assert_eq!(early.target, "xdprobe::hooks");
        assert_eq!(early.level, Level::INFO);
        assert_eq!(early.field("hook"), "down");
        assert!(
            captured.output_line("stderr", "on stderr").is_some(),
            "{:?}",
            captured.records()
        );

        std::fs::write(&go, "").unwrap();
        assert_eq!(handle.await.unwrap(), HookOutcome::Exited(5));
        assert!(
            captured.output_line("stdout", "late").is_some(),
            "{:?}",
            captured.records()
        );

        let records = captured.records();
        let exit = records.last().unwrap();
        assert_eq!(exit.level, Level::WARN, "{records:?}");
        assert_eq!(exit.field("message"), "hook exited with status 5");
        assert_eq!(exit.field("hook"), "down");
        assert_eq!(exit.field("program"), script.to_string_lossy());
        assert!(!exit.field("elapsed").is_empty());
    }

    #[tokio::test]
    async fn success_is_logged_at_info() {
        let (captured, dispatch) = Captured::install();
        let hooks = hooks(
            HookEvent::Up,
            hook(Path::new("/bin/echo"), &["hi"]),
            Duration::from_secs(5),
        );
        let _spawning = SPAWNING.read().await;
        let handle =
            tracing::dispatcher::with_default(&dispatch, || fire(&hooks, facts(HookEvent::Up)))
                .unwrap();
        assert_eq!(handle.await.unwrap(), HookOutcome::Exited(0));

        // The hook's own argument first, then the facts.
        assert!(captured
            .output_line("stdout", "hi up 192.0.2.1 192.0.2.100/24 DOWN 42")
            .is_some());
        let exit = captured.records().pop().unwrap();
        assert_eq!(
            (exit.level, exit.field("message")),
            (Level::INFO, "hook exited with status 0")
        );
    }
}
