//! All six component types through the plugin ABI, in one process: each
//! built-in is exported with `export_plugin!`, initialised into a catalog
//! like a loaded plugin, and a whole request path — client, selector,
//! registry, transport, server, handler, broker — runs through the FFI
//! adapters (host objects handed to "plugin" constructors included).

use micro::broker::MemoryBroker;
use micro::client::MucpClient;
use micro::core::{
    Broker, BrokerOptions, Client, ClientOptions, Registry, RegistryOptions, Result, Selector, SelectorOptions, Server,
    ServerOptions, Transport, TransportOptions,
};
use micro::registry::MemoryRegistry;
use micro::selector::{CacheSelector, Strategy};
use micro::server::MucpServer;
use micro::transport::TcpTransport;
use micro::{Flags, Service};
use micro_plugin::Config;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn new_broker(o: BrokerOptions) -> Result<Arc<dyn Broker>> {
    Ok(MemoryBroker::shared(o.addresses.first().map(String::as_str).unwrap_or("plugin-kinds")))
}
fn new_registry(o: RegistryOptions) -> Result<Arc<dyn Registry>> {
    Ok(MemoryRegistry::shared(o.addresses.first().map(String::as_str).unwrap_or("plugin-kinds")))
}
fn new_selector(o: SelectorOptions) -> Result<Arc<dyn Selector>> {
    Ok(Arc::new(CacheSelector::new(o, Strategy::RoundRobin)))
}
/// Dials made through the plugin transport, by address (each test's
/// server has an address of its own; the tests of this file run at once).
static PLUGIN_DIALS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn dials_to(addr: &str) -> usize {
    PLUGIN_DIALS.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|a| *a == addr).count()
}

/// The tcp transport, counting its dials (on the plugin's side of the boundary).
struct CountingTcp(TcpTransport);

#[micro::core::async_trait]
impl Transport for CountingTcp {
    async fn dial(&self, addr: &str) -> Result<Box<dyn micro::core::Socket>> {
        PLUGIN_DIALS.lock().unwrap_or_else(|p| p.into_inner()).push(addr.to_string());
        self.0.dial(addr).await
    }
    async fn listen(&self, addr: &str) -> Result<Box<dyn micro::core::Listener>> {
        self.0.listen(addr).await
    }
    fn name(&self) -> &str {
        "tcp"
    }
}

fn new_transport(o: TransportOptions) -> Result<Arc<dyn Transport>> {
    Ok(Arc::new(CountingTcp(TcpTransport::new(o))))
}
fn new_client(o: ClientOptions) -> Result<Arc<dyn Client>> {
    Ok(Arc::new(MucpClient::new(o)))
}
fn new_server(o: ServerOptions) -> Result<Arc<dyn Server>> {
    Ok(Arc::new(MucpServer::new(o)))
}

micro_plugin::export_plugin!(@descriptor broker_plugin, name: "pbroker", kind: "broker", new: new_broker);
micro_plugin::export_plugin!(@descriptor registry_plugin, name: "pregistry", kind: "registry", new: new_registry);
micro_plugin::export_plugin!(@descriptor selector_plugin, name: "pselector", kind: "selector", new: new_selector);
micro_plugin::export_plugin!(@descriptor transport_plugin, name: "ptransport", kind: "transport", new: new_transport);
micro_plugin::export_plugin!(@descriptor client_plugin, name: "pclient", kind: "client", new: new_client);
micro_plugin::export_plugin!(@descriptor server_plugin, name: "pserver", kind: "server", new: new_server);
micro_plugin::export_plugin!(@descriptor unknown_plugin, name: "pdb", kind: "database", new: new_client);
micro_plugin::export_plugin!(@descriptor wrong_plugin, name: "pbad", kind: "transport", new: new_client);
micro_plugin::export_plugin!(@descriptor replacing_plugin, name: "mucp", kind: "client", new: new_client);

type Exported = (&'static micro_plugin::abi::PluginDescriptor, &'static micro_plugin::abi::PluginEntry);

#[allow(unsafe_code)]
fn config((d, e): Exported, name: &str) -> Config {
    // SAFETY: each pair is one export_plugin! module's descriptor and entry.
    unsafe { Config::from_descriptor(d, e, format!("/in-process/{name}.so").into()) }
}

fn catalog() -> Result<micro::Catalog, micro_plugin::PluginError> {
    let mut c = micro::catalog::builtin();
    for (d, n) in [
        ((&broker_plugin::MICRO_PLUGIN, &broker_plugin::MICRO_PLUGIN_ENTRY), "broker"),
        ((&registry_plugin::MICRO_PLUGIN, &registry_plugin::MICRO_PLUGIN_ENTRY), "registry"),
        ((&selector_plugin::MICRO_PLUGIN, &selector_plugin::MICRO_PLUGIN_ENTRY), "selector"),
        ((&transport_plugin::MICRO_PLUGIN, &transport_plugin::MICRO_PLUGIN_ENTRY), "transport"),
        ((&client_plugin::MICRO_PLUGIN, &client_plugin::MICRO_PLUGIN_ENTRY), "client"),
        ((&server_plugin::MICRO_PLUGIN, &server_plugin::MICRO_PLUGIN_ENTRY), "server"),
    ] {
        assert_eq!(micro_plugin::init(&config(d, n), &mut c)?, None);
    }
    Ok(c)
}

fn plugin_flags(world: &str) -> Flags {
    Flags {
        registry: Some("pregistry".into()),
        registry_address: Some(world.into()),
        broker: Some("pbroker".into()),
        broker_address: Some(world.into()),
        selector: Some("pselector".into()),
        transport: Some("ptransport".into()),
        client: Some("pclient".into()),
        server: Some("pserver".into()),
        ..Flags::default()
    }
}

/// The next event of a watch, at most 10 s away.
async fn next_event(w: &mut Box<dyn micro::core::Watcher>) -> Result<micro::core::Event> {
    tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
        .await
        .map_err(|_| micro::core::Error::timeout("test", "no watch event within 10 s"))?
}

#[derive(Serialize, Deserialize)]
struct Hello {
    name: String,
}

#[test]
fn init_accepts_all_six_types() -> Result<(), Box<dyn std::error::Error>> {
    let c = catalog()?;
    assert!(c.brokers.contains("pbroker"));
    assert!(c.registries.contains("pregistry"));
    assert!(c.selectors.contains("pselector"));
    assert!(c.transports.contains("ptransport"));
    assert!(c.clients.contains("pclient"));
    assert!(c.servers.contains("pserver"));
    Ok(())
}

#[test]
fn init_refuses_unknown_types_and_wrong_constructors() {
    let mut c = micro::catalog::builtin();
    let e =
        micro_plugin::init(&config((&unknown_plugin::MICRO_PLUGIN, &unknown_plugin::MICRO_PLUGIN_ENTRY), "db"), &mut c)
            .err()
            .map(|e| e.to_string());
    assert_eq!(e.as_deref(), Some("plugin /in-process/db.so: unknown plugin type: database for pdb"));
    let e =
        micro_plugin::init(&config((&wrong_plugin::MICRO_PLUGIN, &wrong_plugin::MICRO_PLUGIN_ENTRY), "bad"), &mut c)
            .err()
            .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("plugin /in-process/bad.so: invalid plugin pbad: its NewFunc new_client makes a client, but its Type is transport")
    );
}

#[test]
fn a_plugin_may_replace_a_builtin_and_says_so() -> Result<(), micro_plugin::PluginError> {
    let mut c = micro::catalog::builtin();
    let replaced = micro_plugin::init(
        &config((&replacing_plugin::MICRO_PLUGIN, &replacing_plugin::MICRO_PLUGIN_ENTRY), "mucp"),
        &mut c,
    )?;
    assert_eq!(replaced.as_deref(), Some("mucp"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_request_path_through_plugin_components() -> Result<(), Box<dyn std::error::Error>> {
    let cat = catalog()?;
    let svc = Service::builder("greeter").flags(plugin_flags("kinds-rpc")).catalog(cat.clone()).build()?;
    assert_eq!(svc.server().name(), "mucp"); // the plugin's component, reporting its own name
    svc.handle("Greeter.Hello", |h: Hello| async move { Ok(format!("Hello {}", h.name)) })?;
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    svc.subscribe_queue("events", "q", move |n: usize| {
        let g = g.clone();
        async move {
            g.fetch_add(n, Ordering::SeqCst);
            Ok(())
        }
    })?;
    // A watch through the plugin registry: its events cross the boundary.
    let mut watch = svc.registry().watch(micro::core::WatchOptions { service: Some("greeter".into()) }).await?;
    svc.start().await?;
    let created = next_event(&mut watch).await?;
    assert_eq!((created.kind, created.service.name.as_str()), (micro::core::EventKind::Create, "greeter"));
    assert_eq!(created.service.nodes.len(), 1, "the event carries the node");

    let caller = Service::builder("caller").flags(plugin_flags("kinds-rpc")).catalog(cat).build()?;
    for i in 0..20 {
        let r: String = caller.client().call("greeter", "Greeter.Hello", &Hello { name: format!("n{i}") }).await?;
        assert_eq!(r, format!("Hello n{i}"));
    }
    // go-micro errors cross intact.
    let e = caller.client().call::<_, String>("greeter", "Greeter.Nope", &Hello { name: "x".into() }).await.err();
    assert_eq!(e.map(|e| (e.id, e.code)), Some(("go.micro.server".to_string(), 404)));
    // Registry data and watch events cross (the selector watches through the plugin registry).
    let rec = caller.registry().get_service("greeter").await?;
    assert_eq!(rec[0].nodes.len(), 1);
    assert!(rec[0].endpoints.iter().any(|e| e.name == "Greeter.Hello"));
    // Pub/sub through the plugin broker, to a subscriber registered through the plugin server.
    for _ in 0..5 {
        caller.client().publish("events", &2usize).await?;
    }
    assert_eq!(got.load(Ordering::SeqCst), 10);
    svc.stop().await?;
    assert_eq!(caller.registry().get_service("greeter").await.err().map(|e| e.code), Some(404));
    loop {
        let e = next_event(&mut watch).await?;
        if e.kind == micro::core::EventKind::Delete {
            assert_eq!(e.service.name, "greeter");
            break;
        }
    }
    watch.stop();
    Ok(())
}

/// The built-in client and server over a transport from a plugin: its
/// sockets split across the boundary, so calls overlap on one connection
/// and streams work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_transport_carries_overlapping_calls_and_streams() -> Result<(), Box<dyn std::error::Error>> {
    let cat = catalog()?;
    let flags = Flags { transport: Some("ptransport".into()), ..Flags::memory("kinds-split") };
    let svc = Service::builder("counter").flags(flags.clone()).catalog(cat.clone()).build()?;
    let slow_started = Arc::new(tokio::sync::Notify::new());
    let started = slow_started.clone();
    svc.handle("Counter.Slow", move |ms: u64| {
        if ms > 0 {
            started.notify_one();
        }
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Ok(ms)
        }
    })?;
    svc.handle_stream("Counter.Count", |_ctx, mut s: micro::TypedStream<u64, u64>| async move {
        let Some(n) = s.recv().await? else { return Ok(()) };
        for i in 1..=n {
            s.send(&i).await?;
        }
        Ok(())
    })?;
    svc.start().await?;
    // One connection per address: the dials through the plugin transport
    // then count connections exactly.
    let one = Flags { client: Some("mucp1".into()), ..flags };
    let mut cat = cat;
    cat.clients.insert(
        "mucp1",
        Arc::new(|o| Ok(Arc::new(MucpClient::with_connections(o, 1)) as Arc<dyn Client>)) as micro::catalog::NewClient,
    );
    let caller = Service::builder("caller").flags(one).catalog(cat).build()?;
    let addr = svc.server().service().nodes[0].address.clone();
    // A slow call does not hold up the quick ones sent after it, on the same connection.
    let c = caller.client().clone();
    let slow = tokio::spawn(async move { c.call::<_, u64>("counter", "Counter.Slow", &2_000u64).await });
    tokio::time::timeout(std::time::Duration::from_secs(10), slow_started.notified()).await?;
    for _ in 0..10 {
        assert_eq!(caller.client().call::<_, u64>("counter", "Counter.Slow", &0u64).await?, 0);
    }
    assert!(!slow.is_finished(), "quick calls waited for the slow one");
    assert_eq!(slow.await??, 2_000);
    assert_eq!(dials_to(&addr), 1, "the eleven overlapping calls shared one connection");
    let mut s: micro::TypedStream<u64, u64> = caller.client().stream("counter", "Counter.Count").await?;
    s.send(&3).await?;
    s.close_send();
    let mut got = Vec::new();
    while let Some(x) = s.recv().await? {
        got.push(x);
    }
    assert_eq!(got, [1, 2, 3]);
    assert_eq!(dials_to(&addr), 2, "the stream took a connection of its own");
    svc.stop().await?;
    Ok(())
}

/// Replies that arrive together cross the boundary together: a socket's
/// receiving half imported from the other side fetches every frame already
/// read in one crossing (`recv_frames`) and hands them out one by one,
/// intact and in order.
#[tokio::test]
async fn frames_that_arrived_together_cross_in_one_batch() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let err = |e: std::io::Error| micro::core::Error::internal("test", e.to_string());
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(err)?;
    let addr = peer.local_addr().map_err(err)?.to_string();
    let transport = micro_plugin::proxy::import_transport(micro_plugin::proxy::export_transport(Arc::new(
        TcpTransport::new(TransportOptions::default()),
    )))?;
    let mut socket = transport.dial(&addr).await?;
    let (mut s, _) = peer.accept().await.map_err(err)?;
    let mut frames = Vec::new();
    for i in 0..3u8 {
        let f = micro::core::frame::to_frame(&micro::core::Message::new(vec![i; 10 + i as usize]));
        frames.push(f.map_err(|e| micro::core::Error::internal("test", e.to_string()))?);
    }
    let mut wire = bytes::BytesMut::new();
    for f in &frames {
        micro::core::frame::put_prefixed(&mut wire, f);
    }
    s.write_all(&wire).await.map_err(err)?;
    let Some((_tx, mut rx)) = socket.split() else { panic!("the proxy's socket splits") };
    // Let all three reach the host's read buffer before the first crossing.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let batch = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv_frames())
        .await
        .map_err(|_| micro::core::Error::timeout("test", "no batch"))??;
    assert_eq!(&batch[..], &wire[..], "all three frames in one crossing");
    // The same through recv_frame, one at a time, after a second write.
    s.write_all(&wire).await.map_err(err)?;
    for (i, f) in frames.iter().enumerate() {
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv_frame())
            .await
            .map_err(|_| micro::core::Error::timeout("test", "no frame"))??;
        assert_eq!(&got[..], &f[..], "frame {i}");
    }
    Ok(())
}

/// A host stream's halves (`micro_plugin::host`, what `HostNet` gives a
/// transport in a plugin) read and write at the same time from two tasks:
/// 16 MiB sent to an echo peer while the echo comes back (more than
/// loopback's buffers hold, so each side must drain while the other fills),
/// then the sending side shut while the reading side still reads; every
/// byte returns, in order, and the echo's end arrives as end of stream.
/// This checks that the halves are correct; that no lock stands between
/// them is a property of the code (each host function touches its own
/// direction's half), which timing cannot show reliably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_stream_halves_read_and_write_at_once() -> Result<(), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Initialising an in-process plugin gives micro_plugin the host's API, as in a real plugin.
    catalog()?;
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = peer.local_addr()?.to_string();
    let echo = tokio::spawn(async move {
        let (s, _) = peer.accept().await?;
        let (mut r, mut w) = s.into_split();
        tokio::io::copy(&mut r, &mut w).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let stream = micro_plugin::host::connect(&addr).await?;
    let (mut rx, mut tx) = stream.into_split();
    const LEN: usize = 16 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(64 * 1024) {
            tx.write_all(chunk).await?;
        }
        tx.shutdown().await?;
        Ok::<_, std::io::Error>(tx)
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(LEN);
        rx.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    });
    // One deadline for the whole exchange.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let got = tokio::time::timeout_at(deadline, reader).await.map_err(|_| "the echo never ended")???;
    let _tx = tokio::time::timeout_at(deadline, writer).await.map_err(|_| "the writer never finished")???;
    tokio::time::timeout_at(deadline, echo).await.map_err(|_| "the echo peer never finished")???;
    assert_eq!(got.len(), LEN, "every byte came back");
    assert!(got == data, "in order");
    Ok(())
}

/// `micro_plugin::host::yield_now` (what a connection's writer in a plugin
/// awaits to gather the requests of every ready caller) crosses to the
/// host's scheduler and yields there: a task made ready beside it runs
/// before it resumes. (Without a yield it would resume at once.)
#[tokio::test(flavor = "current_thread")]
async fn a_plugin_task_yields_on_the_host_scheduler() -> Result<(), Box<dyn std::error::Error>> {
    // Initialising an in-process plugin gives micro_plugin the host's API, as in a real plugin.
    catalog()?;
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beside = ran.clone();
    tokio::spawn(async move { beside.store(true, Ordering::SeqCst) });
    tokio::time::timeout(std::time::Duration::from_secs(5), micro_plugin::host::yield_now())
        .await
        .map_err(|_| "the yield never resumed")?;
    assert!(ran.load(Ordering::SeqCst), "the task ready beside it ran first");
    Ok(())
}
