//! Real servers for micro's tests: `etcd` and `nats-server` (Debian's
//! `etcd-server` and `nats-server` packages, installed by `scripts/setup.sh`)
//! started on free loopback ports, waited for until they answer, restarted
//! on the same port, and killed when dropped. No mock stands in for them.
//! [`contract`] holds the behaviour every registry and broker must have;
//! [`certs`] makes the TLS tests' certificates; [`wait`] polls for an event
//! instead of sleeping for it.

pub mod certs;
pub mod contract;
pub mod hosts;
pub mod proxy;
pub mod wait;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of the harness, as text for test output.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A free port on 127.0.0.1 for a server a test starts.
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux), where
/// `bind(0)` and outgoing connections pick their ports, so that no other
/// socket of the test run is handed the port between this check and the
/// server binding it; never the same port twice in one process; and bound
/// once to check that it is free now. Servers started on it still retry
/// on another port if they cannot bind ([`Etcd::start`], [`Nats::start`]).
pub fn free_port() -> Result<u16, Error> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    // A different start per process (test binaries may run at once).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let seed = (std::process::id() as u64) << 32 ^ now;
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err("no free port found in 20000-31999 on 127.0.0.1".into())
}

/// Attempts at starting a server whose port turned out to be taken.
const START_ATTEMPTS: usize = 5;

/// Where a server binary from Debian's packages is (`etcd`, `nats-server`).
pub fn find(binary: &str) -> Result<PathBuf, Error> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = PathBuf::from(dir).join(binary);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!("{binary} is not installed: run scripts/setup.sh (Debian packages etcd-server, nats-server)").into())
}

/// A server process; killed on drop.
struct Server {
    child: Option<Child>,
}

/// Why a server did not come up.
enum NotReady {
    /// It exited (typically: its port was taken); another port may do.
    Exited(String),
    /// It runs but does not answer.
    Silent(Error),
}

impl Server {
    /// Waits until the server answers on `port`, noticing when it exits
    /// instead (then something else may be the one answering on that port).
    fn wait_ready(&mut self, port: u16, limit: Duration) -> Result<(), NotReady> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let t0 = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(NotReady::Exited(format!("exited ({status}) before answering on port {port}")));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if t0.elapsed() > limit {
                return Err(NotReady::Silent(format!("nothing answers on 127.0.0.1:{port} after {limit:?}").into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

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
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match e.spawn() {
                Ok(()) => return Ok(e),
                Err(NotReady::Exited(why)) => {
                    last = why;
                    e.client_port = free_port()?;
                    e.peer_port = free_port()?;
                }
                Err(NotReady::Silent(err)) => return Err(err),
            }
        }
        Err(format!("etcd did not start in {START_ATTEMPTS} attempts: {last}").into())
    }

    fn spawn(&mut self) -> Result<(), NotReady> {
        self.spawn_once().map_err(NotReady::Silent)?;
        let limit = Duration::from_secs(20);
        let t0 = Instant::now();
        self.server.wait_ready(self.client_port, limit)?;
        // etcd accepts connections before it has a leader; a request sent
        // then waits for the election, which on a loaded machine can take
        // longer than a client's timeout (a service's first registration
        // failed so in CI). Ready means its health check says so.
        loop {
            if let Some(c) = self.server.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.server.child = None;
                    return Err(NotReady::Exited(format!("exited ({status}) before it was healthy")));
                }
            }
            if etcd_healthy(self.client_port) {
                return Ok(());
            }
            if t0.elapsed() > limit {
                return Err(NotReady::Silent(
                    format!("etcd on 127.0.0.1:{} not healthy after {limit:?}", self.client_port).into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn_once(&mut self) -> Result<(), Error> {
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
        Ok(())
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
        restart_on_same_port(|| self.spawn(), "etcd")
    }
}

/// Whether etcd's `/health` on `port` answers `"health":"true"` (it has a
/// leader and serves requests).
fn etcd_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = s.take(4096).read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    reply.starts_with("HTTP/1.1 200") && reply.contains(r#""health":"true""#)
}

/// A nats-server on loopback.
pub struct Nats {
    server: Server,
    port: u16,
    /// Its configuration file (see `spawn`).
    config: tempfile::TempDir,
}

impl Nats {
    /// Starts nats-server and waits until it answers.
    pub fn start() -> Result<Nats, Error> {
        let config = tempfile::tempdir()?;
        // nats-server drops a subscriber that has not read for its write
        // deadline (seconds, by default) as a slow consumer, losing what it held.
        // A test process starved of CPU on a loaded machine is not slow in
        // that sense; a minute keeps the tests about micro, not the scheduler.
        std::fs::write(config.path().join("nats.conf"), "write_deadline: \"60s\"\n")?;
        let mut n = Nats { server: Server { child: None }, port: free_port()?, config };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match n.spawn() {
                Ok(()) => return Ok(n),
                Err(NotReady::Exited(why)) => {
                    last = why;
                    n.port = free_port()?;
                }
                Err(NotReady::Silent(err)) => return Err(err),
            }
        }
        Err(format!("nats-server did not start in {START_ATTEMPTS} attempts: {last}").into())
    }

    fn spawn(&mut self) -> Result<(), NotReady> {
        let child = Command::new(find("nats-server").map_err(NotReady::Silent)?)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-c"])
            .arg(self.config.path().join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| NotReady::Silent(e.into()))?;
        self.server.child = Some(child);
        self.server.wait_ready(self.port, Duration::from_secs(20))
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
        restart_on_same_port(|| self.spawn(), "nats-server")
    }
}

/// Clears every `MICRO_*` variable from a child's environment, so that a
/// test's process sees only what the test gives it (a developer's exported
/// `MICRO_REGISTRY` or `MICRO_PLUGIN` must not leak into a test).
pub fn without_micro_env(c: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("MICRO_")) {
            c.env_remove(k);
        }
    }
    c
}

/// A child process that is killed (and reaped) when dropped, however the
/// test ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends a signal (`"TERM"`, `"INT"`, …) with `kill`.
    pub fn signal(&self, sig: &str) -> std::io::Result<()> {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.0.id().to_string()]).status()?.success();
        if !ok {
            return Err(std::io::Error::other(format!("kill -{sig} {} failed", self.0.id())));
        }
        Ok(())
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::io::Result<std::process::ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.0.try_wait()? {
                return Ok(st);
            }
            if t0.elapsed() > limit {
                return Err(std::io::Error::other(format!("process did not exit within {limit:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits at most `limit` for the process to exit by itself; returns the
    /// exit status and what it left on its piped stdout and stderr.
    pub fn output(mut self, limit: Duration) -> std::io::Result<std::process::Output> {
        use std::io::Read;
        let status = self.wait_exit(limit)?;
        let mut out = std::process::Output { status, stdout: Vec::new(), stderr: Vec::new() };
        if let Some(mut e) = self.0.stderr.take() {
            e.read_to_end(&mut out.stderr)?;
        }
        if let Some(mut o) = self.0.stdout.take() {
            o.read_to_end(&mut out.stdout)?;
        }
        Ok(out)
    }

    /// SIGTERM, then waits at most `limit` for the exit; returns the exit
    /// status and whatever the process left on its piped stdout and stderr.
    pub fn terminate(self, limit: Duration) -> std::io::Result<std::process::Output> {
        self.signal("TERM")?;
        self.output(limit).map_err(|e| std::io::Error::other(format!("after SIGTERM: {e}")))
    }
}

/// Starts a killed server again on its port: the port stays reserved
/// (below the ephemeral range, never handed out again by [`free_port`]),
/// and a start that fails to bind (the old socket not yet gone) is retried.
fn restart_on_same_port(mut spawn: impl FnMut() -> Result<(), NotReady>, what: &str) -> Result<(), Error> {
    let mut last = String::new();
    for attempt in 0..START_ATTEMPTS {
        match spawn() {
            Ok(()) => return Ok(()),
            Err(NotReady::Exited(why)) => last = why,
            Err(NotReady::Silent(e)) => return Err(e),
        }
        std::thread::sleep(Duration::from_millis(200 << attempt));
    }
    Err(format!("{what} did not start again on its port in {START_ATTEMPTS} attempts: {last}").into())
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

    /// Gives the namespace an interface with `cidr` (e.g. `10.99.0.1/24`):
    /// one end of a veth pair whose other end stays inside too, so the
    /// host has a routable address while no packet leaves the namespace.
    pub fn add_address(&self, cidr: &str) -> Result<(), Error> {
        let ns = self.name.as_str();
        ip(&["netns", "exec", ns, "ip", "link", "add", "h0", "type", "veth", "peer", "name", "h1"])?;
        ip(&["netns", "exec", ns, "ip", "addr", "add", cidr, "dev", "h0"])?;
        ip(&["netns", "exec", ns, "ip", "link", "set", "h0", "up"])?;
        ip(&["netns", "exec", ns, "ip", "link", "set", "h1", "up"])?;
        Ok(())
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread of its own that has joined the namespace (and
    /// so do the threads it starts: a tokio runtime built there, an mDNS
    /// daemon), for in-process tests of a component inside it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let path = std::path::Path::new("/var/run/netns").join(&self.name);
        std::thread::spawn(move || -> Result<T, Error> {
            let ns = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| "the thread in the namespace panicked")?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
