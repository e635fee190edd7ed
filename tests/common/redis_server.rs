#![allow(dead_code)]
//! A Redis server of the test's own (Debian's `redis-server`), on a free loopback port,
//! without persistence; killed by its PID on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    /// Starts a server on 127.0.0.1:`port` (its log in `dir`) and waits until it answers
    /// PING.
    pub fn start(dir: &Path, port: u16) -> Redis {
        Redis::start_on(dir, port, &[])
    }

    /// [`Redis::start`], listening on the addresses `also` as well as on 127.0.0.1 (and
    /// answering clients there: protected mode, which refuses all but loopback clients of a
    /// server without a password, off).
    pub fn start_on(dir: &Path, port: u16, also: &[&str]) -> Redis {
        let log = std::fs::File::create(dir.join(format!("redis-{port}.log"))).expect("log");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(also)
            .args(["--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server (Debian package redis-server; tests/run.sh installs it)");
        let redis = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.connection().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// A connection, when the server answers.
    pub fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let mut connection = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING")
            .query::<String>(&mut connection)
            .ok()
            .map(|_| connection)
    }

    /// Stops the server at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
