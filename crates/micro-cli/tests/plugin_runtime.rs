//! A real plugin library loaded into this test process: tokio (spawn,
//! timers, TCP) and tracing work inside it, and its panics — in a method,
//! inside a polled future, in its constructor — become errors while the
//! host goes on.

mod common;

use common::*;
use micro::core::{CallOptions, Client, Request};
use micro::{Flags, Service};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Everything the host's tracing subscriber writes, for assertions.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(w.clone()))
            .try_init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> String {
    String::from_utf8_lossy(&captured().lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

fn probe_service(plugin: &std::path::Path) -> Result<Service, micro::Error> {
    Service::builder("host")
        .flags(Flags {
            plugin: vec![plugin.display().to_string()],
            client: Some("probe".into()),
            registry: Some("memory".into()),
            ..Flags::default()
        })
        .build()
}

async fn call(c: &Arc<dyn Client>, endpoint: &str, body: &[u8]) -> Result<String, micro::core::Error> {
    let req =
        Request { service: "x".into(), endpoint: endpoint.into(), body: body.to_vec().into(), ..Default::default() };
    let r = c.call(req, CallOptions::default()).await?;
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

/// A task a plugin spawned through `host::spawn` that panics ends alone:
/// the panic is logged, the host and the plugin go on, and further tasks
/// spawned the same way run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_host_spawned_plugin_task_ends_only_that_task() -> TestResult {
    captured();
    let plugin = tokio::task::spawn_blocking(|| probe(None)).await?;
    let svc = probe_service(&plugin)?;
    let c = svc.client().inner().clone();
    assert_eq!(call(&c, "Probe.HostSpawnPanic", b"").await?, "spawned");
    let t0 = std::time::Instant::now();
    while !logs().contains("a plugin task ended with a") {
        assert!(t0.elapsed() < Duration::from_secs(10), "the task's panic was never logged:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(logs().contains("probe panics in a task it spawned through the host"), "{}", logs());
    assert_eq!(call(&c, "Probe.HostSpawn", b"").await?, "7", "a task spawned afterwards runs");
    assert_eq!(call(&c, "Probe.Spawn", b"").await?, "42");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_and_tracing_work_inside_a_plugin_and_panics_are_contained() -> TestResult {
    captured();
    let plugin = tokio::task::spawn_blocking(|| probe(None)).await?;
    let svc = probe_service(&plugin)?;
    let c = svc.client().inner().clone();
    assert_eq!(c.name(), "probe");

    // A task spawned on the plugin's runtime, and a timer.
    assert_eq!(call(&c, "Probe.Spawn", b"").await?, "42");
    assert_eq!(call(&c, "Probe.Sleep", b"").await?, "slept");

    // A TCP connection made by plugin code to a server of the host.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await?;
        s.write_all(&b).await?;
        Ok::<_, std::io::Error>(())
    });
    assert_eq!(call(&c, "Probe.Tcp", addr.as_bytes()).await?, "ping");
    echo.await??;

    // A tracing event of the plugin reaches the host's subscriber with its fields.
    assert_eq!(call(&c, "Probe.Log", b"").await?, "logged");
    let l = logs();
    let line =
        l.lines().find(|l| l.contains("hello from the probe plugin")).ok_or(format!("event not forwarded:\n{l}"))?;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("plugin=probe"), "{line}");
    assert!(line.contains("module=micro_plugin_probe"), "{line}");
    assert!(line.contains("probe=\"yes\" answer=42"), "{line}");
    assert!(l.contains("probe initialised"), "the init hook's event: {l}");

    // Panics inside the plugin become errors; the host goes on.
    let e = call(&c, "Probe.PanicNow", b"").await.err().ok_or("no error")?;
    assert_eq!(e.code, 500);
    assert!(e.detail.contains("panic: probe panics in a method"), "{e}");
    let e = call(&c, "Probe.PanicInPoll", b"").await.err().ok_or("no error")?;
    assert!(e.detail.contains("panic: probe panics inside a polled future"), "{e}");
    assert_eq!(call(&c, "Probe.Spawn", b"").await?, "42");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_plugin_calls_are_dropped_on_the_plugin_runtime_and_never_abort() -> TestResult {
    captured();
    let plugin = tokio::task::spawn_blocking(|| probe(None)).await?;
    let svc = probe_service(&plugin)?;
    let c = svc.client().inner().clone();
    let deadline = Duration::from_millis(200);

    // The future's drop spawns a clean-up task: that needs the plugin's
    // runtime entered on the thread that drops it. Dropped on a thread that
    // never ran plugin code: a host thread that polls plugin code keeps the
    // plugin's runtime entered from then on, so only the cancelled future's
    // own guard can have entered it there.
    let req = Request { service: "x".into(), endpoint: "Probe.DropNeedsRuntime".into(), ..Default::default() };
    let mut pending = c.call(req, CallOptions::default());
    let r = tokio::time::timeout(deadline, &mut pending).await;
    assert!(r.is_err(), "the call never answers: the deadline ends the wait");
    std::thread::scope(|s| s.spawn(move || drop(pending)).join()).map_err(|_| "dropping the call panicked")?;
    let t0 = std::time::Instant::now();
    while call(&c, "Probe.CleanedUp", b"").await? != "true" {
        assert!(t0.elapsed() < Duration::from_secs(10), "the cancelled call's clean-up never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The future's drop panics: logged, contained, and the host goes on.
    let r = tokio::time::timeout(deadline, call(&c, "Probe.DropPanics", b"")).await;
    assert!(r.is_err_and(|e| e.to_string().contains("elapsed")), "the call never answers: the deadline cancels it");
    assert_eq!(call(&c, "Probe.Spawn", b"").await?, "42");
    let l = logs();
    // Caught where the future is dropped in place, with the plugin's
    // runtime entered (the crossing's own catch is a second line behind it).
    assert!(
        l.contains("a future panicked while being dropped: probe panics while its cancelled future is dropped"),
        "the panic in drop is caught and reported:\n{l}"
    );
    // Many at once, while other calls are served.
    let mut cancelled = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        cancelled.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(50), call(&c, "Probe.DropPanics", b"")).await;
        }));
    }
    for _ in 0..20 {
        assert_eq!(call(&c, "Probe.Sleep", b"").await?, "slept");
    }
    for t in cancelled {
        t.await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_constructor_is_an_error_naming_the_plugin() -> TestResult {
    let plugin = tokio::task::spawn_blocking(|| probe(Some("panic-new"))).await?;
    let e = probe_service(&plugin).err().map(|e| e.to_string()).ok_or("built")?;
    assert!(
        e.contains(
            "cannot create client \"probe\": plugin probe: panic in constructor: probe panics in its constructor"
        ),
        "{e}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_from_another_compiler_with_the_same_abi_loads_and_works() -> TestResult {
    let plugin = tokio::task::spawn_blocking(|| probe(Some("other-rustc"))).await?;
    let config = micro::plugin::load(&plugin.display().to_string(), Default::default())?;
    assert_eq!(config.build.rustc, "rustc 1.0.0-test (another compiler)");
    assert_ne!(config.build.rustc, micro::plugin::BuildInfo::host().rustc);
    let svc = probe_service(&plugin)?;
    assert_eq!(call(svc.client().inner(), "Probe.Spawn", b"").await?, "42");
    Ok(())
}

/// Calls `Probe.Where` with a service and a header whose strings have a
/// capacity of 1000: a string handed over keeps its capacity, a copy is
/// exactly as long as its text. Returns the probe's answer (the service and
/// the capacity it saw), and the capacity of its `Probe-Big` header's value
/// as it arrived here (1000 on its side), after checking the rest of the
/// response.
async fn where_call(c: &Arc<dyn Client>) -> Result<(String, usize), Box<dyn std::error::Error>> {
    let mut service = String::with_capacity(1000);
    service.push_str("where");
    let mut asked = String::with_capacity(1000);
    asked.push_str("yes");
    let req = Request {
        service,
        endpoint: "Probe.Where".into(),
        content_type: "application/x-probe".into(),
        body: b"{}".to_vec().into(),
        metadata: [("Probe-Asked".to_string(), asked)].into(),
    };
    let r = c.call(req, CallOptions::default()).await?;
    assert_eq!(r.content_type, "application/x-probe");
    assert_eq!(r.metadata.get("Probe-Asked").map(String::as_str), Some("yes"), "{:?}", r.metadata);
    let big = r.metadata.get("Probe-Big").ok_or("no Probe-Big header")?;
    assert_eq!(big, "probe");
    Ok((String::from_utf8_lossy(&r.body).into_owned(), big.capacity()))
}

/// A plugin allocates from the host's heap, so a client call's strings
/// change sides as they are, both ways, instead of being copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_call_hands_its_allocations_over_when_the_plugin_shares_the_heap() -> TestResult {
    let plugin = tokio::task::spawn_blocking(|| probe(None)).await?;
    let svc = probe_service(&plugin)?;
    let c = svc.client().inner().clone();
    for _ in 0..3 {
        let (answer, big) = where_call(&c).await?;
        assert_eq!(answer, "where 1000", "the request's service was copied, not handed over");
        assert_eq!(big, 1000, "the response's header was copied, not handed over");
    }
    assert_eq!(call(&c, "Probe.Spawn", b"").await?, "42");
    Ok(())
}

/// A plugin that allocated before micro's `init` (here a library
/// constructor) keeps its own allocator, whose memory must never reach the
/// host's: its calls are copied both ways, and work the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_allocated_before_init_keeps_its_own_heap_and_its_calls_are_copied() -> TestResult {
    let plugin = tokio::task::spawn_blocking(|| probe(Some("alloc-before-init"))).await?;
    let svc = probe_service(&plugin)?;
    let c = svc.client().inner().clone();
    for _ in 0..3 {
        let (answer, big) = where_call(&c).await?;
        assert_eq!(answer, "where 5", "a string crossed between two heaps without a copy");
        assert_eq!(big, "probe".len(), "a string crossed between two heaps without a copy");
    }
    assert_eq!(call(&c, "Probe.Spawn", b"").await?, "42");
    assert_eq!(call(&c, "Probe.Sleep", b"").await?, "slept");
    Ok(())
}
