//! Streams of each kind — server-streaming, client-streaming and
//! bidirectional — over both protocols (`mucp`, and `grpc` when the feature
//! is on), with the same handler code, including cancellation from either
//! side. Each suite runs three times: built in, with the client taken from
//! a plugin, and with the server taken from a plugin (the built-ins exported
//! with `export_plugin!` and initialised like a loaded library, so every
//! message crosses the plugin ABI). In-process services on loopback; every
//! wait is bounded.

use micro::core::{CallOptions, Client, ClientOptions, Error, Server, ServerOptions};
use micro::{Flags, Service, TypedStream};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Num {
    n: u64,
}

/// Signals on the channel when dropped: tells the test that a handler has
/// ended (or was dropped by its server).
struct Ended(mpsc::UnboundedSender<&'static str>, &'static str);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

struct World {
    server: Service,
    client: Service,
    ended: mpsc::UnboundedReceiver<&'static str>,
}

fn new_mucp_client(o: ClientOptions) -> micro::core::Result<Arc<dyn Client>> {
    Ok(Arc::new(micro::client::MucpClient::new(o)))
}
fn new_mucp_server(o: ServerOptions) -> micro::core::Result<Arc<dyn Server>> {
    Ok(Arc::new(micro::server::MucpServer::new(o)))
}
micro_plugin::export_plugin!(@descriptor mucp_client, name: "plugin-mucp", kind: "client", new: new_mucp_client);
micro_plugin::export_plugin!(@descriptor mucp_server, name: "plugin-mucp", kind: "server", new: new_mucp_server);

#[cfg(feature = "grpc")]
fn new_grpc_client(o: ClientOptions) -> micro::core::Result<Arc<dyn Client>> {
    Ok(Arc::new(micro::grpc::GrpcClient::new(o)?))
}
#[cfg(feature = "grpc")]
fn new_grpc_server(o: ServerOptions) -> micro::core::Result<Arc<dyn Server>> {
    Ok(Arc::new(micro::grpc::GrpcServer::new(o)))
}
#[cfg(feature = "grpc")]
micro_plugin::export_plugin!(@descriptor grpc_client, name: "plugin-grpc", kind: "client", new: new_grpc_client);
#[cfg(feature = "grpc")]
micro_plugin::export_plugin!(@descriptor grpc_server, name: "plugin-grpc", kind: "server", new: new_grpc_server);

/// The built-in catalog plus the plugin components above.
#[allow(unsafe_code)]
fn catalog() -> Result<micro::Catalog, micro_plugin::PluginError> {
    let mut c = micro::catalog::builtin();
    let mut add = |d, e, name: &str| {
        // SAFETY: each pair is one export_plugin! module's descriptor and entry.
        let config = unsafe { micro_plugin::Config::from_descriptor(d, e, format!("/in-process/{name}.so").into()) };
        micro_plugin::init(&config, &mut c).map(|_| ())
    };
    add(&mucp_client::MICRO_PLUGIN, &mucp_client::MICRO_PLUGIN_ENTRY, "mucp-client")?;
    add(&mucp_server::MICRO_PLUGIN, &mucp_server::MICRO_PLUGIN_ENTRY, "mucp-server")?;
    #[cfg(feature = "grpc")]
    {
        add(&grpc_client::MICRO_PLUGIN, &grpc_client::MICRO_PLUGIN_ENTRY, "grpc-client")?;
        add(&grpc_server::MICRO_PLUGIN, &grpc_server::MICRO_PLUGIN_ENTRY, "grpc-server")?;
    }
    Ok(c)
}

/// Which side comes from a plugin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    BuiltIn,
    ClientPlugin,
    ServerPlugin,
}

async fn world(protocol: &str, via: Via) -> Result<World, Box<dyn std::error::Error>> {
    let registry = format!("streams-{protocol}-{}", uuid_like());
    let name = |side: Via| if via == side { format!("plugin-{protocol}") } else { protocol.to_string() };
    let flags = Flags {
        server: Some(name(Via::ServerPlugin)),
        client: Some(name(Via::ClientPlugin)),
        ..Flags::memory(&registry)
    };
    let catalog = catalog()?;
    let server = Service::builder("counter").flags(flags.clone()).catalog(catalog.clone()).build()?;
    let (tx, ended) = mpsc::unbounded_channel();

    // Server-streaming: one request, `n` answers (or forever when n = 0).
    let t = tx.clone();
    server.handle_stream("Counter.Count", move |_ctx, mut s: TypedStream<Num, Num>| {
        let guard = Ended(t.clone(), "count");
        async move {
            let _guard = guard;
            let Some(req) = s.recv().await? else { return Err(Error::bad_request("counter", "no request")) };
            let mut i = 0;
            loop {
                i += 1;
                if req.n > 0 && i > req.n {
                    return Ok(());
                }
                s.send(&Num { n: i }).await?;
                if req.n == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    })?;
    // Client-streaming: many numbers in, their sum out.
    server.handle_stream("Counter.Sum", |_ctx, mut s: TypedStream<Num, Num>| async move {
        let mut sum = 0;
        while let Some(x) = s.recv().await? {
            sum += x.n;
        }
        s.send(&Num { n: sum }).await
    })?;
    // Bidirectional: each number doubled, and metadata echoed first.
    server.handle_stream("Counter.Double", |ctx, mut s: TypedStream<Num, Num>| async move {
        let first: u64 = ctx.metadata.get("x-first").and_then(|v| v.parse().ok()).unwrap_or(0);
        s.send(&Num { n: first }).await?;
        while let Some(x) = s.recv().await? {
            s.send(&Num { n: x.n * 2 }).await?;
        }
        Ok(())
    })?;
    // The server gives up after two messages with an error of its own.
    let t = tx.clone();
    server.handle_stream("Counter.Refuse", move |_ctx, s: TypedStream<Num, Num>| {
        let guard = Ended(t.clone(), "refuse");
        async move {
            let _guard = guard;
            s.send(&Num { n: 1 }).await?;
            s.send(&Num { n: 2 }).await?;
            Err(Error::new("counter", "enough: the counter refuses to go on", 429))
        }
    })?;
    // Client-streaming that "commits" only on a clean end of input.
    let t = tx.clone();
    server.handle_stream("Counter.Upload", move |_ctx, mut s: TypedStream<Num, Num>| {
        let t = t.clone();
        let guard = Ended(t.clone(), "upload-dropped");
        async move {
            let _guard = guard;
            loop {
                match s.recv().await {
                    // Acknowledged, so the caller knows the handler has it.
                    Ok(Some(x)) => s.send(&x).await?,
                    Ok(None) => {
                        let _ = t.send("upload-committed");
                        return s.send(&Num { n: 0 }).await;
                    }
                    Err(e) => {
                        let _ = t.send("upload-failed");
                        return Err(e);
                    }
                }
            }
        }
    })?;
    server.handle("Counter.Plain", |x: Num| async move { Ok::<_, Error>(x) })?;
    server.start().await?;
    let client = Service::builder("caller").flags(flags).catalog(catalog).build()?;
    Ok(World { server, client, ended })
}

fn uuid_like() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

async fn server_streaming(protocol: &str, via: Via) -> TestResult {
    let w = world(protocol, via).await?;
    let mut s: TypedStream<Num, Num> = w.client.client().stream("counter", "Counter.Count").await?;
    s.send(&Num { n: 5 }).await?;
    s.close_send();
    let mut got = Vec::new();
    while let Some(x) = timeout(LIMIT, s.recv()).await?? {
        got.push(x.n);
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    w.server.stop().await?;
    Ok(())
}

async fn client_streaming(protocol: &str, via: Via) -> TestResult {
    let w = world(protocol, via).await?;
    let mut s: TypedStream<Num, Num> = w.client.client().stream("counter", "Counter.Sum").await?;
    for n in 1..=100 {
        s.send(&Num { n }).await?;
    }
    s.close_send();
    assert_eq!(timeout(LIMIT, s.recv()).await??, Some(Num { n: 5050 }));
    assert_eq!(timeout(LIMIT, s.recv()).await??, None);
    w.server.stop().await?;
    Ok(())
}

async fn bidirectional(protocol: &str, via: Via) -> TestResult {
    let w = world(protocol, via).await?;
    let md = HashMap::from([("x-first".to_string(), "7".to_string())]);
    let s: TypedStream<Num, Num> =
        w.client.client().stream_with("counter", "Counter.Double", md, CallOptions::default()).await?;
    let (mut tx, mut rx) = s.split();
    assert_eq!(timeout(LIMIT, rx.recv()).await??, Some(Num { n: 7 }), "metadata reached the handler");
    // Lock-step: each answer arrives before the next request is sent.
    for n in 1..=20 {
        tx.send(&Num { n }).await?;
        assert_eq!(timeout(LIMIT, rx.recv()).await??, Some(Num { n: n * 2 }));
    }
    // And sending from another task while this one receives.
    let sender = tokio::spawn(async move {
        for n in 100..200 {
            tx.send(&Num { n }).await?;
        }
        tx.close();
        Ok::<_, Error>(())
    });
    let mut got = Vec::new();
    while let Some(x) = timeout(LIMIT, rx.recv()).await?? {
        got.push(x.n);
    }
    sender.await??;
    assert_eq!(got, (100..200).map(|n| n * 2).collect::<Vec<_>>());
    w.server.stop().await?;
    Ok(())
}

async fn caller_cancels(protocol: &str, via: Via) -> TestResult {
    let mut w = world(protocol, via).await?;
    let mut s: TypedStream<Num, Num> = w.client.client().stream("counter", "Counter.Count").await?;
    s.send(&Num { n: 0 }).await?; // endless
    for i in 1..=3 {
        assert_eq!(timeout(LIMIT, s.recv()).await??, Some(Num { n: i }));
    }
    drop(s);
    let ended = timeout(LIMIT, w.ended.recv()).await?;
    assert_eq!(ended, Some("count"), "the server dropped the handler after the caller cancelled");
    w.server.stop().await?;
    Ok(())
}

/// Dropping only the receiving half of a split stream cancels it too (the
/// sending half kept): the server drops the handler.
async fn dropping_the_receiving_half_cancels(protocol: &str, via: Via) -> TestResult {
    let mut w = world(protocol, via).await?;
    let s: TypedStream<Num, Num> = w.client.client().stream("counter", "Counter.Count").await?;
    let (tx, mut rx) = s.split();
    tx.send(&Num { n: 0 }).await?; // endless
    for i in 1..=3 {
        assert_eq!(timeout(LIMIT, rx.recv()).await??, Some(Num { n: i }));
    }
    drop(rx);
    let ended = timeout(LIMIT, w.ended.recv()).await?;
    assert_eq!(ended, Some("count"), "the server dropped the handler after the receiving half was dropped");
    drop(tx);
    w.server.stop().await?;
    Ok(())
}

/// A caller that drops its stream in the middle of an upload cancels it:
/// the handler must never see that as a clean end of input.
async fn dropped_upload_is_no_end_of_input(protocol: &str, via: Via) -> TestResult {
    let mut w = world(protocol, via).await?;
    for round in 0..20 {
        let mut s: TypedStream<Num, Num> = w.client.client().stream("counter", "Counter.Upload").await?;
        for n in 1..=3 {
            s.send(&Num { n }).await?;
            assert_eq!(timeout(LIMIT, s.recv()).await??, Some(Num { n }));
        }
        drop(s);
        // The handler either sees the failure (then its guard is dropped)
        // or is cancelled while waiting (only the guard): the guard's event
        // always ends the round, and nothing commits.
        let first = timeout(LIMIT, w.ended.recv()).await?;
        assert!(
            matches!(first, Some("upload-failed" | "upload-dropped")),
            "round {round}: a cancelled upload ended as {first:?}"
        );
        if first == Some("upload-failed") {
            assert_eq!(timeout(LIMIT, w.ended.recv()).await?, Some("upload-dropped"), "round {round}");
        }
    }
    // And a clean close_send commits.
    let mut s: TypedStream<Num, Num> = w.client.client().stream("counter", "Counter.Upload").await?;
    s.send(&Num { n: 1 }).await?;
    s.close_send();
    assert_eq!(timeout(LIMIT, s.recv()).await??, Some(Num { n: 1 }));
    assert_eq!(timeout(LIMIT, s.recv()).await??, Some(Num { n: 0 }));
    assert_eq!(timeout(LIMIT, w.ended.recv()).await?, Some("upload-committed"));
    w.server.stop().await?;
    Ok(())
}

async fn server_cancels(protocol: &str, via: Via) -> TestResult {
    let mut w = world(protocol, via).await?;
    let mut s: TypedStream<Num, Num> = w.client.client().stream("counter", "Counter.Refuse").await?;
    assert_eq!(timeout(LIMIT, s.recv()).await??, Some(Num { n: 1 }));
    assert_eq!(timeout(LIMIT, s.recv()).await??, Some(Num { n: 2 }));
    let err = timeout(LIMIT, s.recv()).await?.err().ok_or("the stream should end in an error")?;
    assert_eq!(err.code, 429, "{err}");
    assert!(err.detail.contains("enough: the counter refuses"), "{err}");
    assert_eq!(timeout(LIMIT, w.ended.recv()).await?, Some("refuse"));
    // The caller's side is over too: sending fails once the protocol noticed.
    let mut failed = false;
    for _ in 0..100 {
        if s.send(&Num { n: 3 }).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed, "send kept succeeding after the server ended the stream");
    w.server.stop().await?;
    Ok(())
}

async fn wrong_kind(protocol: &str, via: Via) -> TestResult {
    let w = world(protocol, via).await?;
    if protocol == "grpc" {
        // gRPC's wire does not tell a plain call from a stream of one
        // message each way (every gRPC stack behaves so): a plain call to a
        // stream endpoint is served as such a stream, and a stream to a plain
        // endpoint as a plain call.
        let x: Num = w.client.client().call("counter", "Counter.Count", &Num { n: 1 }).await?;
        assert_eq!(x, Num { n: 1 });
        let mut s: TypedStream<Num, Num> = w.client.client().stream("counter", "Counter.Plain").await?;
        s.send(&Num { n: 9 }).await?;
        s.close_send();
        assert_eq!(timeout(LIMIT, s.recv()).await??, Some(Num { n: 9 }));
        assert_eq!(timeout(LIMIT, s.recv()).await??, None);
        w.server.stop().await?;
        return Ok(());
    }
    // A stream endpoint called as a plain call, and a plain one as a stream.
    let err = w.client.client().call::<_, Num>("counter", "Counter.Count", &Num { n: 1 }).await.err();
    let err = err.ok_or("a plain call to a stream endpoint should fail")?;
    assert!(err.detail.contains("stream endpoint"), "{err}");
    let mut s: TypedStream<Num, Num> = match w.client.client().stream("counter", "Counter.Plain").await {
        Ok(s) => s,
        Err(e) => {
            assert!(e.detail.contains("not a stream endpoint"), "{e}");
            return Ok(());
        }
    };
    let _ = s.send(&Num { n: 1 }).await;
    s.close_send();
    let err = timeout(LIMIT, s.recv()).await?.err().ok_or("a stream to a plain endpoint should fail")?;
    assert!(err.detail.contains("not a stream endpoint"), "{err}");
    w.server.stop().await?;
    Ok(())
}

macro_rules! per_protocol {
    ($proto:ident, $name:literal, $via:expr) => {
        mod $proto {
            #[tokio::test]
            async fn server_streaming() -> super::TestResult {
                super::server_streaming($name, $via).await
            }
            #[tokio::test]
            async fn client_streaming() -> super::TestResult {
                super::client_streaming($name, $via).await
            }
            #[tokio::test]
            async fn bidirectional() -> super::TestResult {
                super::bidirectional($name, $via).await
            }
            #[tokio::test]
            async fn caller_cancels() -> super::TestResult {
                super::caller_cancels($name, $via).await
            }
            #[tokio::test]
            async fn dropping_the_receiving_half_cancels() -> super::TestResult {
                super::dropping_the_receiving_half_cancels($name, $via).await
            }
            #[tokio::test]
            async fn server_cancels() -> super::TestResult {
                super::server_cancels($name, $via).await
            }
            #[tokio::test]
            async fn dropped_upload_is_no_end_of_input() -> super::TestResult {
                super::dropped_upload_is_no_end_of_input($name, $via).await
            }
            #[tokio::test]
            async fn wrong_kind() -> super::TestResult {
                super::wrong_kind($name, $via).await
            }
        }
    };
}

per_protocol!(mucp, "mucp", super::Via::BuiltIn);
per_protocol!(mucp_client_plugin, "mucp", super::Via::ClientPlugin);
per_protocol!(mucp_server_plugin, "mucp", super::Via::ServerPlugin);
#[cfg(feature = "grpc")]
per_protocol!(grpc, "grpc", super::Via::BuiltIn);
#[cfg(feature = "grpc")]
per_protocol!(grpc_client_plugin, "grpc", super::Via::ClientPlugin);
#[cfg(feature = "grpc")]
per_protocol!(grpc_server_plugin, "grpc", super::Via::ServerPlugin);
