//! A TCP proxy for fault tests: passes traffic, delays it, cuts every connection mid-stream, or
//! blackholes it (sockets stay open, nothing flows — a half-open connection).

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

const PASS: u8 = 0;
const BLACKHOLE: u8 = 1;

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let latency_ms = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (m, l, c) = (mode.clone(), latency_ms.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut all = c.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (m, l) = (m.clone(), l.clone());
                    std::thread::spawn(move || pump(from, to, m, l));
                }
            }
        });
        Proxy {
            port,
            mode,
            latency_ms,
            conns,
        }
    }

    pub fn set_latency(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    pub fn blackhole(&self, on: bool) {
        self.mode
            .store(if on { BLACKHOLE } else { PASS }, Ordering::SeqCst);
    }

    /// Cuts every open connection at once, wherever it is in a packet.
    pub fn drop_all(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, mode: Arc<AtomicU8>, latency: Arc<AtomicU64>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Blackholed: hold the bytes until traffic flows again (TCP would retransmit them).
        while mode.load(Ordering::SeqCst) == BLACKHOLE {
            std::thread::sleep(Duration::from_millis(20));
        }
        let ms = latency.load(Ordering::SeqCst);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
