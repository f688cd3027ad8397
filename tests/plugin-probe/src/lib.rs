//! The probe plugin of micro's tests: a client whose endpoints exercise
//! the plugin's own runtime (spawn, timers, TCP), tracing forwarding,
//! panics and cancellation. Features export it wrongly in each way the
//! loader must refuse. Its library constructor leaves a mark, so that tests
//! can tell whether any of a refused file ran.

use bytes::Bytes;
use micro_core::{CallOptions, Client, ClientOptions, Error, Message, Request, Response, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs when the library is opened (an ELF constructor, before any micro
/// code): appends the plugin's name to the file `MICRO_PROBE_MARKER` names.
/// The name is read from the descriptor, so a copy whose descriptor was
/// changed leaves a different mark.
extern "C" fn mark_loaded() {
    if let Some(path) = std::env::var_os("MICRO_PROBE_MARKER") {
        let name = micro_plugin::abi::fixed_str(&__micro_plugin::MICRO_PLUGIN.name);
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = std::io::Write::write_all(&mut f, format!("{name}\n").as_bytes());
        }
    }
}

#[allow(unsafe_code)]
#[used]
// SAFETY: a plain function pointer in .init_array, which the dynamic loader
// calls once with no arguments when the library is opened.
#[unsafe(link_section = ".init_array")]
static MARK_LOADED: extern "C" fn() = mark_loaded;

/// With `alloc-before-init`: allocates when the library is opened, before
/// micro's `init`, as a library constructor of some crate might. The plugin
/// must then keep its own allocator (see `micro_plugin::heap`).
#[cfg(feature = "alloc-before-init")]
extern "C" fn alloc_before_init() {
    drop(std::hint::black_box(Box::new(7u64)));
}

#[cfg(feature = "alloc-before-init")]
#[allow(unsafe_code)]
#[used]
// SAFETY: as for MARK_LOADED.
#[unsafe(link_section = ".init_array")]
static ALLOC_BEFORE_INIT: extern "C" fn() = alloc_before_init;

/// Set once a cancelled call's clean-up ran (see `Probe.DropNeedsRuntime`).
static CLEANED_UP: AtomicBool = AtomicBool::new(false);

/// Dropped with a cancelled call's future: spawns its clean-up, which needs
/// the plugin's runtime to be entered on the dropping thread.
struct NeedsRuntimeOnDrop;

impl Drop for NeedsRuntimeOnDrop {
    fn drop(&mut self) {
        tokio::spawn(async { CLEANED_UP.store(true, Ordering::SeqCst) });
    }
}

/// Panics when a cancelled call's future is dropped.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("probe panics while its cancelled future is dropped");
    }
}

struct Probe;

/// The probe's NewFunc.
pub fn new_client(_opts: ClientOptions) -> Result<Arc<dyn Client>> {
    if cfg!(feature = "panic-new") {
        panic!("probe panics in its constructor");
    }
    Ok(Arc::new(Probe))
}

fn reply(body: impl Into<Bytes>) -> Result<Response> {
    Ok(Response { content_type: "text/plain".into(), body: body.into(), metadata: Default::default() })
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// Written out instead of with #[async_trait] so that `Probe.PanicNow` can
// panic in the method itself, before any future exists.
impl Client for Probe {
    fn call<'a, 'b>(&'a self, req: Request, _opts: CallOptions) -> Fut<'b, Result<Response>>
    where
        'a: 'b,
        Self: 'b,
    {
        if req.endpoint == "Probe.PanicNow" {
            panic!("probe panics in a method");
        }
        Box::pin(async move {
            match req.endpoint.as_str() {
                "Probe.Spawn" => {
                    let n =
                        tokio::spawn(async { 41 + 1 }).await.map_err(|e| Error::internal("probe", e.to_string()))?;
                    reply(n.to_string())
                }
                "Probe.Sleep" => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    reply("slept")
                }
                "Probe.Tcp" => {
                    let addr = String::from_utf8_lossy(&req.body).to_string();
                    let mut s = tokio::net::TcpStream::connect(&addr)
                        .await
                        .map_err(|e| Error::internal("probe", e.to_string()))?;
                    s.write_all(b"ping").await.map_err(|e| Error::internal("probe", e.to_string()))?;
                    let mut buf = [0u8; 4];
                    s.read_exact(&mut buf).await.map_err(|e| Error::internal("probe", e.to_string()))?;
                    reply(buf.to_vec())
                }
                "Probe.Log" => {
                    tracing::warn!(probe = "yes", answer = 42, "hello from the probe plugin");
                    reply("logged")
                }
                "Probe.DropNeedsRuntime" => {
                    let _guard = NeedsRuntimeOnDrop;
                    std::future::pending::<()>().await;
                    reply("never")
                }
                "Probe.DropPanics" => {
                    let _guard = PanicsOnDrop;
                    std::future::pending::<()>().await;
                    reply("never")
                }
                "Probe.HostSpawn" => {
                    // A background task through the host (or, without a host
                    // runtime, the plugin's own): its answer must arrive.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    micro_plugin::host::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        let _ = tx.send(7);
                    });
                    let n = rx.await.map_err(|_| Error::internal("probe", "the spawned task was dropped"))?;
                    reply(n.to_string())
                }
                "Probe.HostSpawnPanic" => {
                    // A background task that panics: it ends alone, logged.
                    micro_plugin::host::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        panic!("probe panics in a task it spawned through the host");
                    });
                    reply("spawned".to_string())
                }
                "Probe.Where" => {
                    // How the call arrived and how its response leaves: the
                    // request's service's capacity (a string handed over keeps
                    // the caller's, a copy is exactly as long as it), and a
                    // header whose value has a capacity of 1000 for the caller
                    // to see the same way; the request's headers echoed.
                    let mut metadata = req.metadata.clone();
                    let mut big = String::with_capacity(1000);
                    big.push_str("probe");
                    metadata.insert("Probe-Big".into(), big);
                    let body = format!("{} {}", req.service, req.service.capacity());
                    Ok(Response { content_type: req.content_type.clone(), body: body.into(), metadata })
                }
                "Probe.CleanedUp" => reply(CLEANED_UP.load(Ordering::SeqCst).to_string()),
                "Probe.PanicInPoll" => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    panic!("probe panics inside a polled future");
                }
                other => Err(Error::not_found("probe", format!("no endpoint {other}"))),
            }
        })
    }

    fn publish<'a, 'b, 'c>(&'a self, _topic: &'b str, _msg: Message) -> Fut<'c, Result<()>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async { Ok(()) })
    }

    fn name(&self) -> &str {
        "probe"
    }
}

#[cfg(not(any(feature = "unknown-type", feature = "wrong-kind")))]
micro_plugin::export_plugin!(
    name: "probe",
    kind: "client",
    new: new_client,
    init: || {
        if cfg!(feature = "panic-init") {
            panic!("probe panics in init");
        }
        tracing::info!("probe initialised");
    },
);

#[cfg(feature = "unknown-type")]
micro_plugin::export_plugin!(name: "probe", kind: "database", new: new_client);

#[cfg(feature = "wrong-kind")]
micro_plugin::export_plugin!(name: "probe", kind: "transport", new: new_client);
