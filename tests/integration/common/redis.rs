//! A private Redis server for tests that stop, restart or reconfigure it.

use super::{free_port, unavailable};

/// A private `redis-server` on a free loopback port, without persistence: a test may flush
/// or restart it without disturbing the tests sharing the kit's Redis database.
pub struct PrivateRedis {
    pub child: std::process::Child,
    pub port: u16,
}

impl PrivateRedis {
    pub fn spawn(port: u16) -> std::io::Result<std::process::Child> {
        std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
    }

    pub fn start() -> Option<PrivateRedis> {
        let port = free_port();
        let child = match PrivateRedis::spawn(port) {
            Ok(c) => c,
            Err(e) => {
                unavailable("redis", &format!("redis-server: {e}"));
                return None;
            }
        };
        let mut redis = PrivateRedis { child, port };
        for _ in 0..100 {
            if redis.cli(&["PING"]) == "PONG" {
                return Some(redis);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = redis.child.kill();
        panic!("redis-server on port {port} did not answer");
    }

    /// Kills the server (it keeps nothing).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = PrivateRedis::spawn(self.port).expect("redis-server restarts");
        for _ in 0..100 {
            if self.cli(&["PING"]) == "PONG" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer again", self.port);
    }

    /// Database 15, like the kit's default.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/15", self.port)
    }

    pub fn cli(&mut self, args: &[&str]) -> String {
        std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "-n", "15"])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
