//! Running code of this process inside a network namespace: a thread moves itself there
//! (setns), so the sockets it opens from then on belong to that namespace, while the rest of
//! the process stays where it was. For the unit tests that drive xdprobe's own sockets (ARP,
//! SMTP, DNS) against real peers.

use std::{fs::File, future::Future, thread};

use nix::sched::{setns, CloneFlags};

/// Moves the calling thread (only it) into the network namespace `name` (`/run/netns/name`,
/// as made by `ip netns add`). Panics if it cannot.
pub fn enter(name: &str) {
    let path = format!("/run/netns/{name}");
    let netns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    setns(&netns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

/// Runs `f` on a new thread inside namespace `ns`; join it with [`join`].
pub fn spawn_in<T, F>(ns: &str, f: F) -> thread::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        f()
    })
}

/// Runs `f` on a thread inside namespace `ns` and returns what it returns; a panic there is a
/// panic here. `f` may borrow from the caller.
pub fn run_in<T, F>(ns: &str, f: F) -> T
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    thread::scope(|scope| {
        let handle = scope.spawn(|| {
            enter(ns);
            f()
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs the future `f` makes on a new thread inside `ns`, on a current-thread Tokio runtime of
/// its own (as xdprobe drives its sockets).
pub fn spawn_async_in<T, F, Fut>(ns: &str, f: F) -> thread::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    spawn_in(ns, move || block_on(f()))
}

/// [`spawn_async_in`], waiting for the result.
pub fn run_async_in<T, F, Fut>(ns: &str, f: F) -> T
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
{
    run_in(ns, move || block_on(f()))
}

/// Runs `future` to completion on a new current-thread Tokio runtime with every driver on.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// Waits for a thread; its panic becomes ours.
pub fn join<T>(handle: thread::JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_runs_timers() {
        let slept = block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            7
        });
        assert_eq!(slept, 7);
    }

    #[test]
    #[should_panic(expected = "opening /run/netns/xh-no-such-namespace")]
    fn entering_a_missing_namespace_panics_naming_it() {
        run_in("xh-no-such-namespace", || ());
    }

    mod privileged {
        use super::super::*;
        use crate::{cmd, require_root, Namespaces};

        /// A thread inside sees the namespace's links, the caller's thread does not move.
        #[test]
        fn a_thread_inside_sees_the_namespace() {
            require_root();
            let mut namespaces = Namespaces::new(&format!("xe{}-", std::process::id())).unwrap();
            let ns = namespaces.add("a").unwrap();
            cmd::run(&[
                "ip",
                "-n",
                &ns,
                "link",
                "add",
                "xe-dummy0",
                "type",
                "veth",
                "peer",
                "name",
                "xe-dummy1",
            ])
            .unwrap();
            let links = || cmd::stdout(std::process::Command::new("ip").arg("link")).unwrap();
            let inside = run_in(&ns, links);
            assert!(inside.contains("xe-dummy0"), "{inside}");
            assert!(!links().contains("xe-dummy0"));
            let from_async = run_async_in(&ns, || async { links() });
            assert_eq!(from_async, inside);
            assert_eq!(join(spawn_in(&ns, links)), inside);
        }
    }
}
