//! What the daemon tests share: the `dspring` binary run on a data directory, and a daemon
//! process that is started, signalled and stopped.

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Starting or stopping a daemon may take this long on a loaded machine.
const DAEMON_LIMIT: Duration = Duration::from_secs(60);
/// How often a starting or stopping daemon is looked at.
const DAEMON_POLL: Duration = Duration::from_millis(20);

/// `dspring --data-dir <dir>`.
pub fn dspring(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dspring"));
    command.args(["--data-dir", dir.to_str().unwrap()]);
    command
}

/// `dspring init` in a new data directory: the listen port is picked here, once.
pub fn init(dir: &Path) {
    let output = dspring(dir).arg("init").output().unwrap();
    assert!(output.status.success(), "init: {output:?}");
}

/// A daemon process and its data directory; killed on drop, so that a failing test leaves
/// no daemon behind.
pub struct Daemon {
    pub dir: PathBuf,
    pub child: Child,
}

impl Daemon {
    /// Runs `command`, a `dspring daemon` on data directory `dir`, with no stdin or stdout;
    /// returns once its API is up.
    pub fn spawn(mut command: Command, dir: &Path) -> Self {
        // An address left by an earlier run would pass for this one's.
        let _ = std::fs::remove_file(dir.join("api-address"));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DAEMON_LIMIT;
        while !dir.join("api-address").exists() {
            assert!(
                Instant::now() < deadline,
                "the daemon did not start: {command:?}"
            );
            std::thread::sleep(DAEMON_POLL);
        }
        Self {
            dir: dir.to_owned(),
            child,
        }
    }

    /// Sends it `signal` (`-TERM`, `-STOP`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for it to exit; how it exited.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DAEMON_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not stop");
            std::thread::sleep(DAEMON_POLL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
