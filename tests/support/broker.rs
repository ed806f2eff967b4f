//! A Mosquitto broker started from the system binary with a generated config.

use std::{
    fmt::Write as _,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

#[derive(Clone, Default)]
pub struct BrokerOptions {
    pub persistence: bool,
    pub tls: bool,
    /// (user, password) required when set.
    pub password: Option<(String, String)>,
    pub max_inflight: Option<u32>,
    /// `None`: unlimited queue (0), so tests measure tidegate and not the broker's drops.
    pub max_queued: Option<u32>,
    /// A second listener speaking MQTT over WebSockets (port in `Mosquitto::ws_port`).
    pub websockets: bool,
    /// With `tls`: clients must present a certificate signed by the test CA.
    pub mutual_tls: bool,
    /// The same listener on `[::1]` too.
    pub ipv6: bool,
}

pub struct Tls {
    pub ca_pem: PathBuf,
    pub other_ca_pem: PathBuf,
    pub client_pem: PathBuf,
    pub client_key: PathBuf,
}

pub struct Mosquitto {
    pub port: u16,
    pub ws_port: u16,
    pub dir: TempDir,
    pub tls: Option<Tls>,
    child: Option<Child>,
    conf: PathBuf,
}

fn make_certs(dir: &Path) -> (Tls, PathBuf, PathBuf) {
    let c = super::certs::Certs::write(dir, "tidegate test CA");
    let tls = Tls {
        ca_pem: c.ca_pem,
        other_ca_pem: c.other_ca_pem,
        client_pem: c.client_pem,
        client_key: c.client_key,
    };
    (tls, c.server_pem, c.server_key)
}

impl Mosquitto {
    pub fn start(opts: BrokerOptions) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let mut conf = String::new();
        if unsafe_is_root() {
            writeln!(conf, "user root").unwrap();
        }
        // What each MQTT listener has: Mosquitto applies these to the `listener` line above them.
        let mut listener = String::new();
        let mut tls = None;
        if opts.tls {
            let (t, cert, key) = make_certs(dir.path());
            writeln!(listener, "certfile {}\nkeyfile {}", cert.display(), key.display()).unwrap();
            if opts.mutual_tls {
                writeln!(
                    listener,
                    "cafile {}\nrequire_certificate true",
                    t.ca_pem.display()
                )
                .unwrap();
            }
            tls = Some(t);
        }
        write!(conf, "listener {port} 127.0.0.1\n{listener}").unwrap();
        if opts.ipv6 {
            write!(conf, "listener {port} ::1\n{listener}").unwrap();
        }
        match &opts.password {
            Some((user, pass)) => {
                let file = dir.path().join("passwd");
                std::fs::File::create(&file).unwrap();
                let ok = Command::new("mosquitto_passwd")
                    .args(["-b", file.to_str().unwrap(), user, pass])
                    .status()
                    .unwrap();
                assert!(ok.success(), "mosquitto_passwd failed");
                writeln!(conf, "allow_anonymous false\npassword_file {}", file.display()).unwrap();
            }
            None => writeln!(conf, "allow_anonymous true").unwrap(),
        }
        if opts.persistence {
            writeln!(
                conf,
                "persistence true\npersistence_location {}/",
                dir.path().display()
            )
            .unwrap();
        }
        if let Some(n) = opts.max_inflight {
            writeln!(conf, "max_inflight_messages {n}").unwrap();
        }
        writeln!(conf, "max_queued_messages {}", opts.max_queued.unwrap_or(0)).unwrap();
        let ws_port = if opts.websockets { super::free_port() } else { 0 };
        if opts.websockets {
            writeln!(conf, "listener {ws_port} 127.0.0.1\nprotocol websockets").unwrap();
        }
        writeln!(conf, "log_dest file {}/mosquitto.log", dir.path().display()).unwrap();
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::File::create(&conf_path)
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        let mut m = Mosquitto {
            port,
            ws_port,
            dir,
            tls,
            child: None,
            conf: conf_path,
        };
        // A port from `free_port` is free only until it is let go: a test running beside this
        // one can bind it before Mosquitto does, and Mosquitto then exits. Other ports, then.
        for _ in 1..5 {
            if m.try_spawn() {
                return m;
            }
            m.move_to_other_ports();
        }
        m.spawn();
        m
    }

    /// Starts Mosquitto and waits until it listens; false when it exited first (its log says
    /// why) or did not listen in time.
    fn try_spawn(&mut self) -> bool {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto not installed (the test command installs it)");
        self.child = Some(child);
        let port = self.port;
        let up = super::wait_for(Duration::from_secs(10), || {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                return Some(false);
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| true)
        });
        if up != Some(true) {
            self.kill9();
        }
        up == Some(true)
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "mosquitto did not start on port {}; its log:\n{}",
            self.port,
            std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
        );
    }

    /// Rewrites the config with new listener ports, after one was taken.
    fn move_to_other_ports(&mut self) {
        let mut conf = std::fs::read_to_string(&self.conf).unwrap();
        let port = super::free_port();
        conf = conf.replace(&format!("listener {} ", self.port), &format!("listener {port} "));
        self.port = port;
        if self.ws_port != 0 {
            let ws_port = super::free_port();
            conf = conf.replace(
                &format!("listener {} ", self.ws_port),
                &format!("listener {ws_port} "),
            );
            self.ws_port = ws_port;
        }
        std::fs::write(&self.conf, conf).unwrap();
    }

    pub fn url(&self) -> String {
        if self.tls.is_some() {
            format!("mqtts://localhost:{}", self.port)
        } else {
            format!("mqtt://127.0.0.1:{}", self.port)
        }
    }

    /// Graceful stop (SIGTERM: Mosquitto saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    /// Publishes each line as one message with `mosquitto_pub -l`, waiting for the broker's acks.
    pub fn publish_lines(&self, topic: &str, qos: u8, lines: &[String]) {
        self.publish_lines_with(topic, qos, lines, &[]);
    }

    pub fn publish_lines_with(&self, topic: &str, qos: u8, lines: &[String], extra: &[&str]) {
        publish_lines_to(self.port, topic, qos, lines, extra);
    }

    /// Publishes one message whose payload is the exact bytes given.
    pub fn publish_bytes(&self, topic: &str, payload: &[u8], extra: &[&str]) {
        if payload.is_empty() {
            let ok = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-t",
                    topic,
                    "-q",
                    "1",
                    "-n",
                ])
                .args(extra)
                .status()
                .unwrap();
            assert!(ok.success(), "mosquitto_pub -n failed");
            return;
        }
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                topic,
                "-q",
                "1",
                "-s",
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(payload).unwrap();
        assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
    }
}

fn unsafe_is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false)
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Mosquitto {
    /// `publish_lines` for use from another thread, given only the port.
    pub fn publish_lines_on(port: u16, topic: &str, lines: &[String]) {
        publish_lines_to(port, topic, 1, lines, &[]);
    }
}

impl Mosquitto {
    /// Publishes `seq-<from..to>` at about `rate` messages a second (QoS 1), from another thread.
    pub fn publish_paced_on(port: u16, topic: &str, from: usize, to: usize, rate: usize) {
        let mut child = mosquitto_pub_lines(port, topic, 1, &[]);
        let mut stdin = child.stdin.take().unwrap();
        let tick = Duration::from_millis(100);
        let per_tick = (rate / 10).max(1);
        let start = std::time::Instant::now();
        let mut i = from;
        let mut ticks = 0u32;
        while i < to {
            let end = (i + per_tick).min(to);
            let lines: String = (i..end).map(|n| format!("seq-{n}\n")).collect();
            if stdin.write_all(lines.as_bytes()).is_err() {
                break;
            }
            i = end;
            ticks += 1;
            if let Some(wait) = (start + tick * ticks).checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        drop(stdin);
        assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
    }
}

/// `mosquitto_pub -l`: each line one message, written in chunks, waiting for the broker's acks.
fn publish_lines_to(port: u16, topic: &str, qos: u8, lines: &[String], extra: &[&str]) {
    let mut child = mosquitto_pub_lines(port, topic, qos, extra);
    {
        let mut stdin = child.stdin.take().unwrap();
        for chunk in lines.chunks(500) {
            let mut buf = chunk.join("\n");
            buf.push('\n');
            stdin.write_all(buf.as_bytes()).unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

/// A `mosquitto_pub -l` process reading messages, one per line, from its stdin.
fn mosquitto_pub_lines(port: u16, topic: &str, qos: u8, extra: &[&str]) -> std::process::Child {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            &qos.to_string(),
            "-l",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}
