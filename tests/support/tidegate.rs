//! A tidegate process started from the binary under test, its log captured to a file.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

pub struct Tidegate {
    child: Option<Child>,
    pub log: PathBuf,
    /// Where the running process's part of the (appended) log starts.
    log_start: usize,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tidegate")
}

impl Tidegate {
    pub fn start(args: &[&str], log_dir: &Path) -> Tidegate {
        Self::start_with_env(args, &[], log_dir)
    }

    /// Starts tidegate and waits until it has subscribed (the log says so), failing with the log.
    pub fn subscribed(args: &[&str], log_dir: &Path) -> Tidegate {
        let t = Self::start(args, log_dir);
        assert!(
            t.wait_log("subscribed", Duration::from_secs(20)),
            "tidegate did not subscribe:\n{}",
            t.log_text()
        );
        t
    }

    /// `run` from `broker` into `db` for `topic` as `client_id` (plus `extra` flags), subscribed.
    pub fn run_subscribed(
        broker: &str,
        db: &str,
        topic: &str,
        client_id: &str,
        extra: &[&str],
        log_dir: &Path,
    ) -> Tidegate {
        let mut args = run_args(broker, db, topic, client_id);
        args.extend_from_slice(extra);
        Self::subscribed(&args, log_dir)
    }

    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)], log_dir: &Path) -> Tidegate {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        // Tests run side by side: each API gets a free port unless the test picks one, as a
        // flag or in its config file.
        let file_listens = args
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| args.get(i + 1))
            .and_then(|f| std::fs::read_to_string(f).ok())
            .is_some_and(|text| text.lines().any(|l| l.trim_start().starts_with("listen")));
        // The subcommand follows the global options (`--log-format json`): without this, a
        // run with one listened on the default port, 8080, and failed where that was taken.
        let mut words = args.iter().map(String::as_str);
        let command = loop {
            match words.next() {
                Some("--log-format") => {
                    words.next();
                }
                other => break other,
            }
        };
        if matches!(command, Some("run" | "serve")) && !args.iter().any(|a| a == "--listen") && !file_listens
        {
            args.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        let mut t = Tidegate {
            child: None,
            log_start: 0,
            log: log_dir.join(format!("tidegate-{}.log", super::free_port())),
            args,
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.log_start = log.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let child = Command::new(bin())
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        super::wait_for(timeout, || self.log_text().contains(needle).then_some(())).is_some()
    }

    /// The running process's API base URL, read from its log (`API listening on http://…`, or
    /// `https://…`).
    pub fn api(&self) -> String {
        let found = super::wait_for(Duration::from_secs(15), || {
            let text = self.log_text();
            let text = text.get(self.log_start..).unwrap_or("");
            let at = text.rfind("API listening on http")?;
            let rest = &text[at + "API listening on ".len()..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            Some(rest[..end].to_string())
        });
        found.unwrap_or_else(|| panic!("no API address in the log:\n{}", self.log_text()))
    }

    /// Checks the metrics invariant of the running process once its traffic has settled:
    /// received = committed + duplicates + rejected, nothing in flight. Returns `received`.
    pub fn assert_metrics_balance(&self) -> f64 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("{}/metrics", self.api());
        let sum = super::metric;
        let mut last = String::new();
        let settled = super::wait_for(Duration::from_secs(15), || {
            last = reqwest::blocking::get(&url).ok()?.text().ok()?;
            let received = sum(&last, "tidegate_messages_received_total");
            let accounted = sum(&last, "tidegate_messages_committed_total")
                + sum(&last, "tidegate_duplicates_suppressed_total")
                + sum(&last, "tidegate_messages_rejected_total");
            let in_flight = sum(&last, "tidegate_in_flight_messages");
            (received == accounted && in_flight == 0.0).then_some(received)
        });
        settled.unwrap_or_else(|| panic!("metrics do not balance:\n{last}"))
    }

    /// The exit status if the process has ended, `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Sends SIGHUP (a reload).
    pub fn hangup(&self) {
        let _ = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status();
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, then the exit status.
    pub fn term(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let threads = threads_of(c.id());
                let _ = c.kill();
                panic!(
                    "tidegate did not stop within 20 s of SIGTERM; its threads:\n{threads}\nits log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tidegate {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The arguments of `run` from `broker` into `db` for `topic` as `client_id`.
pub fn run_args<'a>(broker: &'a str, db: &'a str, topic: &'a str, client_id: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--broker",
        broker,
        "--db",
        db,
        "--topic",
        topic,
        "--client-id",
        client_id,
    ]
}

/// Runs tidegate to completion (for commands that exit by themselves).
pub fn run_to_end(args: &[&str], envs: &[(&str, &str)], cwd: &Path) -> (ExitStatus, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// Each thread's name, state and where it waits in the kernel: what a hung process was doing.
fn threads_of(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut out = String::new();
    for task in tasks.flatten() {
        let p = task.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("?");
        out.push_str(&format!(
            "{} {} wchan={}\n{}",
            read("comm").trim(),
            state,
            read("wchan"),
            read("stack")
        ));
    }
    out
}
