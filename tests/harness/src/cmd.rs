//! Running external programs (iproute2, dig, openssl...): a failure names the command line,
//! how it ended and what it printed.

use std::{
    ffi::OsStr,
    process::{Command, Output},
};

use anyhow::{bail, Context as _};

/// Runs `args[0]` with the rest as arguments; fails with its output unless it exits 0.
pub fn run(args: &[&str]) -> anyhow::Result<Output> {
    let (program, rest) = args.split_first().context("no program to run")?;
    output(Command::new(program).args(rest))
}

/// Runs `cmd`, capturing its output; fails with that output unless it exits 0.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("spawning `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Like [`output`], returning stdout as text.
pub fn stdout(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&output(cmd)?.stdout).into_owned())
}

/// `prog arg1 arg2 ...`, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_command_its_status_and_output() {
        let err = run(&["sh", "-c", "echo said; echo oops >&2; exit 3"]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sh -c echo said"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("said") && msg.contains("oops"), "{msg}");
        assert!(run(&[]).is_err());
        assert_eq!(stdout(Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }
}
