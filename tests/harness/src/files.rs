//! Scratch files and directories under the system's temp dir, each with a name of its own and
//! removed on drop (also when a test fails), and the removal of those a killed run left; files
//! with the mode a test asks for; scripts.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;

/// One counter for every scratch name of the process, so no two are alike.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// `$TMPDIR/xdprobe-TAG-PID-N`: unique in this process and across processes.
fn unique_path(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("xdprobe-{tag}-{}-{n}", std::process::id()))
}

/// The PID in the name `xdprobe-TAG-PID-N` of a scratch directory.
fn owner_pid(name: &str, tag: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("xdprobe-")?
        .strip_prefix(tag)?
        .strip_prefix('-')?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Removes the scratch directories `xdprobe-TAG-PID-N` in `base` (the temp dir, for
/// [`TempDir::new`]'s) whose process is gone: left behind by runs that were killed before they
/// could drop them. Returns what it removed.
pub fn remove_orphans(base: &Path, tag: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = fs::read_dir(base).with_context(|| format!("listing {}", base.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", base.display()))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| owner_pid(name, tag)) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        removed.push(path);
    }
    Ok(removed)
}

/// A fresh, empty directory of our own, removed with what it holds on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Panics if the directory cannot be made.
    pub fn new(tag: &str) -> Self {
        let dir = unique_path(tag);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to the new file `name` with the permission bits `mode`, whatever the
    /// umask; returns its path. Panics on failure.
    pub fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.path(name);
        write_new(&path, text, mode).unwrap_or_else(|e| panic!("{e:#}"));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A file of our own holding what it was made with, removed on drop.
#[derive(Debug)]
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Panics if the file cannot be written.
    pub fn new(contents: &str) -> Self {
        let path = unique_path("file");
        fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Writes `text` to a new file at `path` (replacing one that was there) with the permission
/// bits `mode`, whatever the umask.
pub fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    // Whatever the umask took away.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    Ok(())
}

/// Writes an executable script (for hooks the tests give xdprobe).
pub fn write_script(path: &Path, body: &str) {
    fs::write(path, body).expect("writing the script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_files_and_dirs_are_unique_and_go_on_drop() {
        let (a, b) = (TempDir::new("t"), TempDir::new("t"));
        assert_ne!(a.dir(), b.dir());
        let private = a.write("secret", "s3cret\n", 0o600);
        let mode = fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&private).unwrap(), "s3cret\n");
        let script = a.path("hook");
        write_script(&script, "#!/bin/sh\nexit 0\n");
        assert_eq!(
            fs::metadata(&script).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let file = TempFile::new("x");
        assert_eq!(fs::read_to_string(file.path()).unwrap(), "x");
        let (dir, path) = (a.dir().to_path_buf(), file.path().to_path_buf());
        drop((a, file));
        assert!(!dir.exists() && !path.exists());
        assert!(b.dir().is_dir());
    }

    #[test]
    fn orphans_are_the_dirs_of_processes_that_are_gone() {
        assert_eq!(owner_pid("xdprobe-etcd-123-4", "etcd"), Some(123));
        assert_eq!(owner_pid("xdprobe-etcd-123", "etcd"), None);
        assert_eq!(owner_pid("xdprobe-etcdx-123-4", "etcd"), None);
        assert_eq!(owner_pid("xdprobe-named-123-4", "etcd"), None);

        let base = TempDir::new("orphans");
        let ours = base.path(&format!("xdprobe-etcd-{}-0", std::process::id()));
        fs::create_dir(&ours).unwrap();
        // A pid that was just reaped belongs to nobody.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let orphan = base.path(&format!("xdprobe-etcd-{}-0", gone.id()));
        fs::create_dir_all(orphan.join("member")).unwrap();
        let other_tag = base.path(&format!("xdprobe-named-{}-0", gone.id()));
        fs::create_dir(&other_tag).unwrap();

        assert_eq!(
            remove_orphans(base.dir(), "etcd").unwrap(),
            vec![orphan.clone()]
        );
        assert!(!orphan.exists() && ours.is_dir() && other_tag.is_dir());
    }
}
