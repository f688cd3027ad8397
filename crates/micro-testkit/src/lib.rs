//! Real servers for micro's tests: `etcd` and `nats-server` (Debian's
//! `etcd-server` and `nats-server` packages, installed by `scripts/setup.sh`)
//! started on free loopback ports, waited for until they answer, restarted
//! on the same port, and killed when dropped. No mock stands in for them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of the harness, as text for test output.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn find(binary: &str) -> Result<PathBuf, Error> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = PathBuf::from(dir).join(binary);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!("{binary} is not installed: run scripts/setup.sh (Debian packages etcd-server, nats-server)").into())
}

fn wait_port(port: u16, limit: Duration) -> Result<(), Error> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if t0.elapsed() > limit {
            return Err(format!("nothing answers on 127.0.0.1:{port} after {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A server process; killed on drop.
struct Server {
    child: Option<Child>,
}

impl Server {
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An etcd server on loopback.
pub struct Etcd {
    server: Server,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd with a fresh data directory and waits until it answers.
    pub fn start() -> Result<Etcd, Error> {
        let mut e = Etcd {
            server: Server { child: None },
            data: tempfile::tempdir()?,
            client_port: free_port()?,
            peer_port: free_port()?,
        };
        e.spawn()?;
        Ok(e)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(find("etcd")?)
            .args(["--name", "test", "--data-dir"])
            .arg(self.data.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.server.child = Some(child);
        wait_port(self.client_port, Duration::from_secs(20))
    }

    /// `127.0.0.1:<port>` for `--registry-address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL).
    pub fn kill(&mut self) {
        self.server.stop();
    }

    /// Kills etcd and starts it again on the same port; with `wipe`, with an
    /// empty data directory (a server that lost its state).
    pub fn restart(&mut self, wipe: bool) -> Result<(), Error> {
        self.server.stop();
        if wipe {
            let _ = std::fs::remove_dir_all(self.data.path().join("data"));
        }
        self.spawn()
    }
}

/// A nats-server on loopback.
pub struct Nats {
    server: Server,
    port: u16,
}

impl Nats {
    /// Starts nats-server and waits until it answers.
    pub fn start() -> Result<Nats, Error> {
        let mut n = Nats { server: Server { child: None }, port: free_port()? };
        n.spawn()?;
        Ok(n)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let child = Command::new(find("nats-server")?)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.server.child = Some(child);
        wait_port(self.port, Duration::from_secs(20))
    }

    /// `127.0.0.1:<port>` for `--broker-address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        self.server.stop();
    }

    /// Starts it again on the same port.
    pub fn start_again(&mut self) -> Result<(), Error> {
        self.server.stop();
        self.spawn()
    }
}

/// A private network namespace with only a loopback interface that carries
/// multicast, for mDNS tests: nothing sent inside it leaves this machine.
/// Needs root and `ip` (iproute2); removed on drop.
pub struct NetNs {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), Error> {
    let o = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if !o.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()).into());
    }
    Ok(())
}

impl NetNs {
    /// Creates the namespace and sets up its loopback for multicast.
    pub fn create() -> Result<NetNs, Error> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("micro-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "multicast", "on"])?;
        ip(&["netns", "exec", &ns.name, "ip", "route", "add", "224.0.0.0/4", "dev", "lo"])?;
        Ok(ns)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
