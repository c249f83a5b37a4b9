//! A tansu broker (the Apache-Kafka-compatible broker the tests run
//! against) on a free loopback port, and child processes killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A loopback port nothing listens on, and never one this test process was
/// handed before: the kernel may give the same ephemeral port to two
/// `bind(0)`s in a row once the first listener is closed, and two children
/// then race for it (seen: a server's gRPC and admin ports were the same).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/tansu"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "tansu (the Kafka-compatible broker these tests run against) is not installed: \
             run ./scripts/setup.sh, or `cargo install tansu --locked --features dynostore`, \
             or set TANSU_BIN"
            )
        })
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.0.try_wait() {
                assert!(status.success(), "sesame exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sesame did not stop within 10 s of SIGTERM");
    }
}

/// A tansu broker with in-memory storage on a loopback port.
pub struct Broker {
    pub port: u16,
    proc: Option<Proc>,
}

impl Broker {
    pub fn start() -> Broker {
        // A port from `free_port` can be taken by another test's process
        // before tansu binds it; tansu then exits, and the port still
        // answers (that other process). So the broker counts as up only if
        // it is still running a moment after its port answers.
        for _ in 0..5 {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let mut child = Command::new(tansu_bin())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                    "--storage-engine",
                    "memory://tansu/",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn tansu");
            let mut answers = false;
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    answers = true;
                    break;
                }
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            if answers {
                std::thread::sleep(Duration::from_millis(300));
                if matches!(child.try_wait(), Ok(None)) {
                    return Broker {
                        port,
                        proc: Some(Proc(child)),
                    };
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("tansu did not start: five tries, each on a fresh port");
    }

    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// SIGSTOP freezes it (connections stay open, nothing answers), SIGCONT
    /// thaws it with its state intact.
    pub fn signal(&self, sig: &str) {
        let pid = self.proc.as_ref().expect("broker running").0.id();
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn uri(&self) -> String {
        format!("kafka://{}", self.brokers())
    }
}
