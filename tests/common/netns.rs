//! Network namespaces for the tests whose far ends need addresses other than 127.0.0.1: `ip`
//! (iproute2, run as root as in CI), and running test code inside a namespace.

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// Runs `ip` with `args`; panics with its output when it fails.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (this test needs iproute2)"));
    assert!(
        output.status.success(),
        "ip {args:?}: {} (this test needs root to set up network namespaces)",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Removes the network namespace `name`, and the links in it (quietly: it may be gone). It
/// goes for good with the last process in it.
pub fn delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `f` on a thread of its own moved into the network namespace `name` (made with `ip
/// netns add`): the sockets it opens and the processes it starts live there, and stay there
/// once it returns.
pub fn inside<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let path = format!("/run/netns/{name}");
                let namespace =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns only reads the descriptor, open for the whole call; it moves
                // this thread alone (a thread of the scope's own) into the namespace.
                let moved = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    moved,
                    0,
                    "setns into {name}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
