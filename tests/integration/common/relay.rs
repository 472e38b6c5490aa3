//! A TCP relay between a daemon and a service it uses, which a test can cut and restore.

use super::{free_port, postgres_admin_url};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A TCP relay from a loopback port to `target`, which can be cut and restored.
pub struct Relay {
    pub port: u16,
    target: String,
    up: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(target: &str) -> Relay {
        let mut relay = Relay {
            port: free_port(),
            target: target.to_string(),
            up: Arc::new(AtomicBool::new(false)),
            streams: Arc::default(),
            listener: None,
        };
        relay.restore();
        relay
    }

    fn pipe(mut from: TcpStream, mut to: TcpStream) {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    }

    /// A relay to the test kit's PostgreSQL.
    pub fn to_postgres() -> Relay {
        let url = url::Url::parse(&postgres_admin_url()).expect("postgres url");
        Relay::start(&format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(5432)
        ))
    }

    /// Listens again and relays every new connection.
    pub fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay port");
        self.up.store(true, Ordering::SeqCst);
        let (up, streams, target) = (self.up.clone(), self.streams.clone(), self.target.clone());
        self.listener = Some(std::thread::spawn(move || {
            for client in listener.incoming() {
                if !up.load(Ordering::SeqCst) {
                    break; // the listener is dropped: new connections are refused
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut kept = streams.lock().expect("streams");
                for s in [&client, &server] {
                    kept.push(s.try_clone().expect("clone"));
                }
                Relay::pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                Relay::pipe(server, client);
            }
        }));
    }

    /// Resets every relayed connection and refuses new ones.
    pub fn cut(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        for s in self.streams.lock().expect("streams").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
