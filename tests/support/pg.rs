//! PostgreSQL for tests: a fresh database on the machine's server (for plain tests), or a whole
//! server of our own started from the system binaries (for tests that stop and start it).

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

/// The shared PostgreSQL server (trust auth on loopback) the test command provides:
/// `TIDEGATE_TEST_PG`, else the machine's own on 5432.
pub fn shared() -> String {
    std::env::var("TIDEGATE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Drops, once per test process, the databases earlier test processes made and left behind
/// (named after their process id, which no longer runs): on a developer's machine the shared
/// server would otherwise gather a few dozen a run. A live process's are left alone.
fn drop_leftovers(server: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let names = psql(
            server,
            "postgres",
            "SELECT datname FROM pg_database WHERE datname LIKE 'tidegate\\_t\\_%'",
        );
        for name in names.lines() {
            let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
                psql(
                    server,
                    "postgres",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                );
            }
        }
    });
}

/// Creates a fresh database on the shared server and returns its URL.
pub fn fresh_database(server: &str) -> String {
    drop_leftovers(server);
    let name = format!(
        "tidegate_t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 100_000
    );
    psql(server, "postgres", &format!("CREATE DATABASE {name}"));
    format!("{server}/{name}?sslmode=disable")
}

/// Runs SQL with psql and returns its unaligned output.
pub fn psql(server: &str, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([&format!("{server}/{db}"), "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .expect("psql not installed");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries missing (the test command installs them)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL version under /usr/lib/postgresql")
}

fn user_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A PostgreSQL server of our own on a free port; it refuses to run as root, so it runs as the
/// `postgres` user when we are root.
pub struct PgServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    password: Option<String>,
    tls: bool,
}

/// The certificates of a PostgreSQL server started with TLS: its own names only `localhost`, as
/// a distribution's self-signed one names the machine, and is signed by `ca_pem`.
pub struct PgTls {
    pub ca_pem: PathBuf,
}

impl PgServer {
    pub fn start() -> PgServer {
        Self::start_with(None)
    }

    /// A server that checks passwords (scram-sha-256) instead of trusting loopback.
    pub fn start_with_password(password: &str) -> PgServer {
        Self::start_with(Some(password))
    }

    /// A server that offers TLS (and still allows connections without it).
    pub fn start_with_tls() -> (PgServer, PgTls) {
        let mut s = Self::prepare(None);
        let certs = super::certs::Certs::write(s.dir.path(), "tidegate test PostgreSQL CA");
        let data = s.dir.path().join("data");
        std::fs::copy(&certs.server_pem, data.join("server.crt")).unwrap();
        std::fs::copy(&certs.server_key, data.join("server.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = user_ids() {
            for f in ["server.crt", "server.key"] {
                std::os::unix::fs::chown(data.join(f), Some(uid), Some(gid)).unwrap();
            }
        }
        s.tls = true;
        s.spawn();
        (s, PgTls { ca_pem: certs.ca_pem })
    }

    fn start_with(password: Option<&str>) -> PgServer {
        let mut s = Self::prepare(password);
        s.spawn();
        s
    }

    /// A data directory, initialised; the server not started.
    fn prepare(password: Option<&str>) -> PgServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        if let Some(pw) = password {
            std::fs::write(&pwfile, pw).unwrap();
        }
        let ids = user_ids();
        if let Some((uid, gid)) = ids {
            Command::new("chown")
                .args(["-R", &format!("{uid}:{gid}"), dir.path().to_str().unwrap()])
                .status()
                .unwrap();
        }
        let mut initdb = Command::new(bin_dir().join("initdb"));
        initdb
            .args([
                "-D",
                data.to_str().unwrap(),
                "-A",
                if password.is_some() {
                    "scram-sha-256"
                } else {
                    "trust"
                },
                "-U",
                "postgres",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if password.is_some() {
            initdb.arg(format!("--pwfile={}", pwfile.display()));
        }
        if let (Some((uid, gid)), true) = (ids, is_root()) {
            initdb.uid(uid).gid(gid);
        }
        assert!(initdb.status().unwrap().success(), "initdb failed");
        PgServer {
            port: super::free_port(),
            dir,
            child: None,
            password: password.map(str::to_string),
            tls: false,
        }
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = Command::new(bin_dir().join("postgres"));
        cmd.args([
            "-D",
            data.to_str().unwrap(),
            "-p",
            &self.port.to_string(),
            "-k",
            self.dir.path().to_str().unwrap(),
        ])
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(if self.tls {
            &[
                "-c",
                "ssl=on",
                "-c",
                "ssl_cert_file=server.crt",
                "-c",
                "ssl_key_file=server.key",
            ][..]
        } else {
            &[]
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let (Some((uid, gid)), true) = (user_ids(), is_root()) {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().unwrap());
        let port = self.port;
        let up = super::wait_for(Duration::from_secs(30), || {
            Command::new("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .status()
                .ok()
                .filter(|s| s.success())
        });
        assert!(up.is_some(), "postgres did not start on {port}");
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("postgres://postgres:{pw}@127.0.0.1:{}", self.port),
            None => format!("postgres://postgres@127.0.0.1:{}", self.port),
        }
    }

    /// Fast shutdown (SIGINT), as an operator's restart would do.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-QUIT", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}
