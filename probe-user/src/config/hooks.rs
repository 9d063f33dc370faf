//! The operator's hooks (`on_down`, `on_up`, `on_claim`, `on_release`, `on_cluster`): which command runs for
//! which event, split like a shell would split it but never run through one, and how long it
//! may run. Running them is `act::hooks`.

use std::{fmt, str::FromStr, time::Duration};

use crate::config::{
    error::{bounded, SettingsError},
    file::FileConfig,
    flags::RunArgs,
};

/// `--hook-timeout` when not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened, from the daemon's point of view; each has its own hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    /// A monitored host was declared DOWN.
    Down,
    /// A monitored host came back UP.
    Up,
    /// This node claimed the virtual IP.
    Claim,
    /// This node released the virtual IP.
    Release,
    /// Cluster (`on_cluster`): this node was elected a group's holder.
    Elected,
    /// Cluster: this node could not renew its etcd lease in time.
    LostLease,
    /// Cluster: this node removed a VIP it held because it may no longer hold it.
    Fenced,
    /// Cluster: another node is now the group's holder.
    HandedOver,
}

impl HookEvent {
    /// The name hooks see, as first fact argument and in `XDPROBE_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Down => "down",
            HookEvent::Up => "up",
            HookEvent::Claim => "claim",
            HookEvent::Release => "release",
            HookEvent::Elected => "elected",
            HookEvent::LostLease => "lost_lease",
            HookEvent::Fenced => "fenced",
            HookEvent::HandedOver => "handed_over",
        }
    }
}

impl fmt::Display for HookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command line split like a shell would (shell-words), but run without a shell.
///
/// Quotes and backslashes group and escape words; nothing else is special: no variables,
/// globbing, pipes or redirections (a `>` is passed on as an argument). A word starting with `#`
/// begins a comment, as in a shell. To use shell features, make the hook a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub program: String,
    pub args: Vec<String>,
}

impl Hook {
    /// Splits `cmd` into a program and its arguments. Fails on an empty command and on
    /// unbalanced quotes, so that a mistyped flag is reported at startup, not at failover.
    pub fn parse(cmd: &str) -> Result<Hook, String> {
        let mut words = shell_words::split(cmd)
            .map_err(|e| format!("cannot split hook command {cmd:?}: {e} (unbalanced quotes?)"))?
            .into_iter();
        let program = words
            .next()
            .ok_or_else(|| format!("empty hook command {cmd:?}: a program to run is needed"))?;
        Ok(Hook {
            program,
            args: words.collect(),
        })
    }
}

/// So that a command-line parser can take a `Hook` directly.
impl FromStr for Hook {
    type Err = String;

    fn from_str(cmd: &str) -> Result<Self, Self::Err> {
        Hook::parse(cmd)
    }
}

/// The configured hooks; one per event, each optional.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hooks {
    pub on_down: Option<Hook>,
    pub on_up: Option<Hook>,
    pub on_claim: Option<Hook>,
    pub on_release: Option<Hook>,
    /// The cluster's events, all four.
    pub on_cluster: Option<Hook>,
    /// How long a hook may run before it is killed with everything it started. A zero timeout
    /// kills a hook as soon as it has been started.
    pub timeout: Duration,
}

/// No hooks, and the documented default timeout (a derived default would be a zero timeout,
/// which kills every hook at once).
impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            on_down: None,
            on_up: None,
            on_claim: None,
            on_release: None,
            on_cluster: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Hooks {
    /// The hook configured for `event`, if any.
    pub fn hook_for(&self, event: HookEvent) -> Option<&Hook> {
        match event {
            HookEvent::Down => self.on_down.as_ref(),
            HookEvent::Up => self.on_up.as_ref(),
            HookEvent::Claim => self.on_claim.as_ref(),
            HookEvent::Release => self.on_release.as_ref(),
            HookEvent::Elected
            | HookEvent::LostLease
            | HookEvent::Fenced
            | HookEvent::HandedOver => self.on_cluster.as_ref(),
        }
    }

    /// The hooks of the flags over the file; each command checked, the timeout bounded.
    pub fn resolve(args: &RunArgs, file: &FileConfig) -> Result<Self, SettingsError> {
        let hook = |field: &'static str, flag: &Option<String>, file: &Option<String>| {
            flag.clone()
                .or(file.clone())
                .map(|cmd| {
                    Hook::parse(&cmd).map_err(|reason| SettingsError::invalid(field, reason))
                })
                .transpose()
        };
        Ok(Hooks {
            on_down: hook("on_down", &args.on_down, &file.on_down)?,
            on_up: hook("on_up", &args.on_up, &file.on_up)?,
            on_claim: hook("on_claim", &args.on_claim, &file.on_claim)?,
            on_release: hook("on_release", &args.on_release, &file.on_release)?,
            on_cluster: hook("on_cluster", &args.on_cluster, &file.on_cluster)?,
            timeout: bounded(
                "hook_timeout",
                args.hook_timeout.or(file.hook_timeout),
                DEFAULT_TIMEOUT,
                Duration::from_millis(10),
                Duration::from_secs(3600),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_splits_like_a_shell() {
        let hook = Hook::parse(r#"/usr/bin/logger -t "xd probe" hello"#).unwrap();
        assert_eq!(hook.program, "/usr/bin/logger");
        assert_eq!(hook.args, ["-t", "xd probe", "hello"]);

        let hook: Hook = r"notify 'a b' c\ d '$HOME' > file".parse().unwrap();
        assert_eq!(hook.program, "notify");
        assert_eq!(hook.args, ["a b", "c d", "$HOME", ">", "file"]);

        assert_eq!(
            Hook::parse("  /bin/true  ").unwrap(),
            Hook {
                program: "/bin/true".into(),
                args: vec![]
            }
        );
    }

    #[test]
    fn parse_rejects_empty_and_unbalanced() {
        for empty in ["", "   ", "\t\n", "# only a comment"] {
            let error = Hook::parse(empty).unwrap_err();
            assert!(error.contains("empty hook command"), "{empty:?}: {error}");
        }
        for unbalanced in [r#"/bin/echo "oops"#, "/bin/echo 'oops"] {
            let error = Hook::parse(unbalanced).unwrap_err();
            assert!(
                error.contains("cannot split hook command"),
                "{unbalanced:?}: {error}"
            );
        }
    }

    #[test]
    fn events_display_as_hooks_see_them() {
        let names: Vec<String> = [
            HookEvent::Down,
            HookEvent::Up,
            HookEvent::Claim,
            HookEvent::Release,
            HookEvent::Elected,
            HookEvent::LostLease,
            HookEvent::Fenced,
            HookEvent::HandedOver,
        ]
        .iter()
        .map(|e| e.to_string())
        .collect();
        assert_eq!(
            names,
            [
                "down",
                "up",
                "claim",
                "release",
                "elected",
                "lost_lease",
                "fenced",
                "handed_over"
            ]
        );
    }

    #[test]
    fn default_timeout_is_ten_seconds_and_no_hooks() {
        let hooks = Hooks::default();
        assert_eq!(hooks.timeout, Duration::from_secs(10));
        for event in [
            HookEvent::Down,
            HookEvent::Up,
            HookEvent::Claim,
            HookEvent::Release,
        ] {
            assert!(hooks.hook_for(event).is_none());
        }
    }
}
