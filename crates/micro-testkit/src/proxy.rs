//! A TCP proxy that makes a path between hosts bad on purpose, in the
//! spirit of Shopify's toxiproxy: it adds latency, stalls (holds every byte
//! while keeping connections open), resets the connections it carries, and
//! refuses new ones. This kernel has no `netem` qdisc, so tests put this
//! proxy on the path instead: a service advertises the proxy's address
//! (`--server-advertise`) and clients reach it only through the proxy.
//!
//! The proxy runs on a thread of its own in the test process; started
//! [`on`](Proxy::start_on) a simulated [`Host`](crate::hosts::Host), that
//! thread joins the host's network namespace first, so the proxy listens
//! and dials as that host. It stops when dropped.

use crate::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// What the proxy does to the traffic, changed while it runs.
#[derive(Default)]
struct Toxics {
    /// Added to every chunk of bytes, each way, in microseconds.
    latency_us: AtomicU64,
    /// While set, no byte is passed on (they are kept, not lost).
    stalled: AtomicBool,
    /// While set, new connections are closed at once.
    refusing: AtomicBool,
    /// Bumped to reset every open connection.
    resets: AtomicU64,
    /// Connections accepted so far.
    accepted: AtomicUsize,
}

/// A running proxy from [`addr`](Proxy::addr) to an upstream address.
pub struct Proxy {
    addr: String,
    toxics: Arc<Toxics>,
    /// Wakes the connections when a toxic changes (stall ends, reset).
    changed: watch::Sender<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on `listen` (e.g. `127.0.0.1:0`) to `upstream`, in this
    /// process's network namespace.
    pub fn start(listen: &str, upstream: &str) -> Result<Proxy, Error> {
        Self::spawn(None, listen, upstream)
    }

    /// A proxy that runs as `host`: it listens on `listen` and dials
    /// `upstream` from that host's network namespace (needs root, as the
    /// hosts do).
    pub fn start_on(host: &crate::hosts::Host, listen: &str, upstream: &str) -> Result<Proxy, Error> {
        Self::spawn(Some(host.netns_path()), listen, upstream)
    }

    fn spawn(netns: Option<std::path::PathBuf>, listen: &str, upstream: &str) -> Result<Proxy, Error> {
        let toxics = Arc::new(Toxics::default());
        let (changed, _) = watch::channel(());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let (listen, upstream) = (listen.to_string(), upstream.to_string());
        let (t, ch) = (toxics.clone(), changed.clone());
        let thread = std::thread::Builder::new().name("testkit-proxy".into()).spawn(move || {
            let ready = |r: Result<String, String>| {
                let _ = ready_tx.send(r);
            };
            if let Some(ns) = netns {
                // setns moves only this thread: the proxy's sockets are made here.
                let joined = std::fs::File::open(&ns).map_err(|e| e.to_string()).and_then(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
                });
                if let Err(e) = joined {
                    return ready(Err(format!("joining {}: {e}", ns.display())));
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return ready(Err(format!("proxy runtime: {e}"))),
            };
            rt.block_on(async move {
                let l = match TcpListener::bind(&listen).await {
                    Ok(l) => l,
                    Err(e) => return ready(Err(format!("proxy listening on {listen}: {e}"))),
                };
                match l.local_addr() {
                    Ok(a) => ready(Ok(a.to_string())),
                    Err(e) => return ready(Err(e.to_string())),
                }
                tokio::select! {
                    _ = stopped => {}
                    _ = serve(l, upstream, t, ch) => {}
                }
            });
        })?;
        let addr =
            ready_rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "the proxy did not start within 10 s")??;
        Ok(Proxy { addr, toxics, changed, stop: Some(stop), thread: Some(thread) })
    }

    /// Where clients connect.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Adds `d` to every chunk of bytes, each way (zero: none).
    pub fn latency(&self, d: Duration) {
        self.toxics.latency_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Stalls (`true`) or resumes (`false`) the traffic: while stalled,
    /// connections stay open and no byte gets through; bytes held are
    /// passed on when it resumes.
    pub fn stall(&self, on: bool) {
        self.toxics.stalled.store(on, Ordering::Relaxed);
        let _ = self.changed.send(());
    }

    /// Resets every connection open now (each side gets a TCP reset).
    pub fn reset(&self) {
        self.toxics.resets.fetch_add(1, Ordering::Relaxed);
        let _ = self.changed.send(());
    }

    /// Closes new connections at once (`true`), or carries them (`false`).
    pub fn refuse(&self, on: bool) {
        self.toxics.refusing.store(on, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.toxics.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(l: TcpListener, upstream: String, toxics: Arc<Toxics>, changed: watch::Sender<()>) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok((client, _)) = l.accept().await {
        toxics.accepted.fetch_add(1, Ordering::Relaxed);
        if toxics.refusing.load(Ordering::Relaxed) {
            let _ = client.set_zero_linger();
            continue;
        }
        let (upstream, toxics, changed) = (upstream.clone(), toxics.clone(), changed.subscribe());
        tasks.spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                let _ = client.set_zero_linger();
                return;
            };
            carry(client, server, toxics, changed).await;
        });
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
}

/// Carries one connection both ways until both directions end, or a reset.
async fn carry(client: TcpStream, server: TcpStream, toxics: Arc<Toxics>, changed: watch::Receiver<()>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let epoch = toxics.resets.load(Ordering::Relaxed);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let ((cr, sw, up_reset), (sr, cw, down_reset)) = tokio::join!(
        pipe(cr, sw, toxics.clone(), changed.clone(), epoch),
        pipe(sr, cw, toxics.clone(), changed, epoch)
    );
    if up_reset || down_reset {
        // A reset, not a close: with a zero linger, closing sends RST.
        for (r, w) in [(cr, cw), (sr, sw)] {
            if let Ok(s) = r.reunite(w) {
                let _ = s.set_zero_linger();
            }
        }
    }
}

/// Whether a reset was asked for since `epoch`.
fn was_reset(toxics: &Toxics, epoch: u64) -> bool {
    toxics.resets.load(Ordering::Relaxed) != epoch
}

/// Passes bytes from `r` to `w`, each chunk delayed by the latency and
/// held while stalled, until end of stream, an error or a reset (`true`).
/// The halves are handed back so that a reset can close them with RST.
async fn pipe(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    toxics: Arc<Toxics>,
    changed: watch::Receiver<()>,
    epoch: u64,
) -> (OwnedReadHalf, OwnedWriteHalf, bool) {
    // A reader and a writer joined by a queue, so that latency delays each
    // chunk without holding back the reading of the next.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let until_reset = |mut changed: watch::Receiver<()>| {
        let toxics = toxics.clone();
        async move {
            while !was_reset(&toxics, epoch) {
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let read = {
        let (toxics, reset) = (toxics.clone(), until_reset(changed.clone()));
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            tokio::select! {
                _ = reset => {}
                _ = async {
                    while let Ok(n @ 1..) = r.read(&mut buf).await {
                        let latency = Duration::from_micros(toxics.latency_us.load(Ordering::Relaxed));
                        if tx.send((Instant::now() + latency, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                } => {}
            }
            r
        }
    };
    let write = {
        let (toxics, reset) = (toxics.clone(), until_reset(changed.clone()));
        let mut changed = changed;
        async move {
            let ended = tokio::select! {
                _ = reset => false,
                _ = async {
                    while let Some((due, chunk)) = rx.recv().await {
                        tokio::time::sleep_until(due.into()).await;
                        while toxics.stalled.load(Ordering::Relaxed) {
                            if changed.changed().await.is_err() {
                                return;
                            }
                        }
                        if w.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                } => true,
            };
            if ended {
                // The other side closed its end: pass the close on.
                let _ = w.shutdown().await;
            }
            w
        }
    };
    let (r, w) = tokio::join!(read, write);
    let reset = was_reset(&toxics, epoch);
    (r, w, reset)
}
