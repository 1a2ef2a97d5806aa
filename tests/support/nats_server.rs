//! A real `nats-server` with JetStream for one test: on a free loopback port,
//! with its own store directory, stopped (and its directory removed) when
//! dropped. It can be killed and started again on the same port and store.
//!
//! The binary is `$GENFLOW_NATS_SERVER` if set, else `nats-server` on the
//! `PATH` or in `/usr/sbin` (where Debian's package puts it). A missing
//! binary fails the test with a message saying how to install it.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running `nats-server -js`.
pub(crate) struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// The extra arguments it was started with.
    args: Vec<String>,
    /// How many times it was started (each start has its own log).
    starts: u32,
}

impl NatsServer {
    /// A server anyone may connect to.
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server that requires `token` (`--auth`).
    #[allow(dead_code, reason = "not every test needs credentials")]
    pub(crate) fn start_with_token(token: &str) -> Self {
        Self::start_with(&["--auth", token])
    }

    /// A server started with these extra arguments.
    pub(crate) fn start_with(args: &[&str]) -> Self {
        let binary = binary();
        // The port is free when picked; if another process takes it before
        // the server binds it, the server exits and another one is picked.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::Builder::new().prefix("genflow-nats-").tempdir().expect("a temporary directory");
            let log = dir.path().join("server.log");
            let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
            let child = spawn(&binary, port, dir.path(), &log, &args);
            let mut server = NatsServer { child, port, dir, args, starts: 1 };
            if server.wait_ready(&log) {
                return server;
            }
        }
        panic!("nats-server did not start on a free port in 5 attempts");
    }

    /// `nats://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's store directory.
    #[allow(dead_code, reason = "not every test looks at the store")]
    pub(crate) fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Stops the server as a crash would: [`kill`](Self::kill).
    #[allow(dead_code, reason = "not every test stops its server")]
    pub(crate) fn stop(&mut self) {
        self.kill();
    }

    /// Kills the server (`SIGKILL`, a crash: nothing is flushed or said
    /// goodbye to) and waits until it has exited.
    #[allow(dead_code, reason = "not every test kills its server")]
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again, after [`kill`](Self::kill), on the same
    /// port and store directory with the same arguments, and waits until
    /// it is ready.
    ///
    /// # Panics
    ///
    /// If it does not start (its port was taken meanwhile).
    #[allow(dead_code, reason = "not every test restarts its server")]
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.starts += 1;
        let log = self.dir.path().join(format!("server-{}.log", self.starts));
        self.child = spawn(&binary(), self.port, self.dir.path(), &log, &self.args);
        assert!(
            self.wait_ready(&log),
            "nats-server did not start again on port {}; its log:\n{}",
            self.port,
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Waits (up to 20 s) until the log says the server is ready; `false`
    /// if it exited first (its port was taken).
    fn wait_ready(&mut self, log: &Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if fs::read_to_string(log).is_ok_and(|text| text.contains("Server is ready")) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not ready after 20 s; its log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary` on `port` with JetStream, its store in `dir`.
fn spawn(binary: &Path, port: u16, dir: &Path, log: &Path, args: &[String]) -> Child {
    Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("store"))
        .arg("-l")
        .arg(log)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GENFLOW_NATS_SERVER") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nats-server"), PathBuf::from("/usr/local/bin/nats-server")])
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the `nats` tests need a nats-server (2.9 or newer) with JetStream: install it \
                 (Debian/Ubuntu: `apt-get install nats-server`) or set GENFLOW_NATS_SERVER to its path"
            )
        })
}
