//! Client → selector → transport → server → handler, in one process, over
//! real loopback TCP, with the memory registry and broker.

use micro::core::{CallOptions, Error, Node, RegisterOptions, Service as Record};
use micro::{Flags, Service};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Serialize, Deserialize)]
struct Hello {
    name: String,
}
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Greeting {
    greeting: String,
}
#[derive(Serialize, Deserialize)]
struct Sleep {
    ms: u64,
}

/// Flags for an isolated in-process world: a memory registry and broker of our own.
fn flags(world: &str) -> Flags {
    Flags::memory(world)
}

fn greeter(world: &str) -> Result<Service, micro::Error> {
    let svc = Service::builder("greeter").version("1.0.0").flags(flags(world)).build()?;
    svc.handle("Greeter.Hello", |r: Hello| async move {
        if r.name.is_empty() {
            return Err(Error::bad_request("greeter", "name is required"));
        }
        Ok(Greeting { greeting: format!("Hello {}", r.name) })
    })?;
    svc.handle("Greeter.Sleep", |r: Sleep| async move {
        tokio::time::sleep(Duration::from_millis(r.ms)).await;
        Ok(Greeting { greeting: "slept".into() })
    })?;
    svc.handle("Greeter.Panic", |_: Hello| async move {
        if true {
            panic!("handler bug");
        }
        Ok(Greeting { greeting: String::new() })
    })?;
    svc.handle_with_context("Greeter.Meta", |ctx: micro::Context, _: Hello| async move {
        Ok(ctx.metadata.get("X-Trace").cloned().unwrap_or_default())
    })?;
    Ok(svc)
}

fn caller(world: &str) -> Result<Service, micro::Error> {
    Service::builder("caller").flags(flags(world)).build()
}

#[tokio::test]
async fn typed_call_and_go_micro_errors() -> TestResult {
    let svc = greeter("rpc-basic")?;
    svc.start().await?;
    let c = caller("rpc-basic")?;
    let g: Greeting = c.client().call("greeter", "Greeter.Hello", &Hello { name: "John".into() }).await?;
    assert_eq!(g.greeting, "Hello John");

    // An application error comes back as the same value.
    let e = c.client().call::<_, Greeting>("greeter", "Greeter.Hello", &Hello { name: "".into() }).await.err();
    assert_eq!(e, Some(Error::bad_request("greeter", "name is required")));

    // Unknown endpoint and unknown service.
    let e = c.client().call::<_, Greeting>("greeter", "Greeter.Nope", &Hello { name: "x".into() }).await.err();
    assert_eq!(e.map(|e| (e.id, e.code)), Some(("go.micro.server".into(), 404)));
    let e = c.client().call::<_, Greeting>("nobody", "X.Y", &Hello { name: "x".into() }).await.err();
    assert_eq!(e.map(|e| (e.code, e.detail)), Some((404, "service nobody: not found".into())));

    // A body the handler cannot decode is the caller's fault: 400.
    let e = c.client().call::<_, Greeting>("greeter", "Greeter.Hello", &42).await.err();
    assert_eq!(e.map(|e| e.code), Some(400));

    // Metadata reaches the handler.
    let mut md = HashMap::new();
    md.insert("X-Trace".to_string(), "abc".to_string());
    let got: String = c
        .client()
        .call_with("greeter", "Greeter.Meta", &Hello { name: "x".into() }, md, CallOptions::default())
        .await?;
    assert_eq!(got, "abc");

    // The built-in health endpoint.
    let h: serde_json::Value = c.client().call("greeter", "Debug.Health", &serde_json::json!({})).await?;
    assert_eq!(h["status"], "ok");
    svc.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_and_the_server_goes_on() -> TestResult {
    let svc = greeter("rpc-panic")?;
    svc.start().await?;
    let c = caller("rpc-panic")?;
    let e = c.client().call::<_, Greeting>("greeter", "Greeter.Panic", &Hello { name: "x".into() }).await.err();
    assert_eq!(e.map(|e| (e.code, e.detail)), Some((500, "handler Greeter.Panic panicked".into())));
    let g: Greeting = c.client().call("greeter", "Greeter.Hello", &Hello { name: "A".into() }).await?;
    assert_eq!(g.greeting, "Hello A");
    svc.stop().await?;
    Ok(())
}

#[tokio::test]
async fn timeout_is_a_408_and_reaches_the_server() -> TestResult {
    let svc = greeter("rpc-timeout")?;
    svc.start().await?;
    let c = caller("rpc-timeout")?;
    let opts = CallOptions { timeout: Some(Duration::from_millis(100)), ..Default::default() };
    let t0 = Instant::now();
    let e = c
        .client()
        .call_with::<_, Greeting>("greeter", "Greeter.Sleep", &Sleep { ms: 3000 }, HashMap::new(), opts)
        .await
        .err();
    // The server gets the remaining time in the `Timeout` header and usually
    // gives up first (go.micro.server); otherwise the client does (go.micro.client).
    let e = e.ok_or("call did not fail")?;
    assert_eq!(e.code, 408, "{e}");
    assert!(["go.micro.server", "go.micro.client"].contains(&e.id.as_str()), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    svc.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_dead_node_is_retried_on_another() -> TestResult {
    let svc = greeter("rpc-retry")?;
    svc.start().await?;
    // A node that refuses connections, registered beside the live one.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dead = Record {
        name: "greeter".into(),
        version: "1.0.0".into(),
        nodes: vec![Node { id: "dead".into(), address: format!("127.0.0.1:{dead_port}"), ..Default::default() }],
        ..Default::default()
    };
    svc.registry().register(&dead, RegisterOptions::default()).await?;
    let c = Service::builder("caller")
        .flags(Flags { selector: Some("roundrobin".into()), ..flags("rpc-retry") })
        .build()?;
    for i in 0..20 {
        let g: Greeting = c.client().call("greeter", "Greeter.Hello", &Hello { name: format!("{i}") }).await?;
        assert_eq!(g.greeting, format!("Hello {i}"));
    }
    // With retries off, the dead node's turn fails with a connection error.
    let c0 = Service::builder("caller")
        .flags(Flags { selector: Some("roundrobin".into()), client_retries: Some(0), ..flags("rpc-retry") })
        .build()?;
    let mut failures = 0;
    for _ in 0..4 {
        if let Err(e) = c0.client().call::<_, Greeting>("greeter", "Greeter.Hello", &Hello { name: "x".into() }).await {
            assert!(e.detail.starts_with("connection error"), "{e}");
            failures += 1;
        }
    }
    assert_eq!(failures, 2);
    svc.stop().await?;
    Ok(())
}

/// A loopback address whose dials hang: a listener that never accepts, its
/// accept queue filled, so that the kernel drops further SYNs (as a host
/// that went away does). Hold the returned value for as long as it is needed.
async fn black_hole() -> Result<(String, impl Sized), Box<dyn std::error::Error>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(0)?;
    let addr = listener.local_addr()?;
    let mut held = Vec::new();
    // A backlog of 0 queues one connection or two; bounded, in case a kernel queues more.
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Ok((addr.to_string(), (listener, held))),
        }
    }
    Err("the listener's accept queue never filled".into())
}

/// A node whose dial hangs (a host that went away without a word) costs a
/// call at most half of its time, then the call goes on to another node,
/// over mucp and grpc alike; with one attempt left, that attempt may wait
/// for the whole of the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_dial_hangs_gets_half_of_a_calls_time_then_another_node() -> TestResult {
    let protocols: &[&str] = if cfg!(feature = "grpc") { &["mucp", "grpc"] } else { &["mucp"] };
    for protocol in protocols {
        let world = format!("rpc-black-hole-{protocol}");
        let f = Flags { server: Some(protocol.to_string()), client: Some(protocol.to_string()), ..flags(&world) };
        let svc = Service::builder("greeter").version("1.0.0").flags(f.clone()).build()?;
        svc.handle("Greeter.Hello", |r: Hello| async move { Ok::<_, Error>(Greeting { greeting: r.name }) })?;
        svc.start().await?;
        let (hole, _hole) = black_hole().await?;
        let gone = Record {
            name: "greeter".into(),
            version: "1.0.0".into(),
            nodes: vec![Node { id: "gone".into(), address: hole, ..Default::default() }],
            ..Default::default()
        };
        svc.registry().register(&gone, RegisterOptions::default()).await?;
        let timeout = Duration::from_secs(2);
        let c = Service::builder("caller")
            .flags(Flags {
                selector: Some("roundrobin".into()),
                client_request_timeout: Some(timeout),
                client_retries: Some(1),
                ..f.clone()
            })
            .build()?;
        // Roundrobin: calls take turns trying the hole first (until it has
        // failed three times and is skipped).
        let mut waited = Vec::new();
        for i in 0..8 {
            let t0 = Instant::now();
            let g: Greeting = c
                .client()
                .call("greeter", "Greeter.Hello", &Hello { name: format!("{i}") })
                .await
                .map_err(|e| format!("{protocol}, call {i}: {e}"))?;
            assert_eq!(g.greeting, format!("{i}"));
            waited.push(t0.elapsed());
        }
        // A call that tried the hole waited out half of its 2 s for the
        // dial, then the live node answered.
        let tried = waited.iter().filter(|t| **t >= Duration::from_millis(900)).count();
        assert!(tried >= 1, "{protocol}: no call tried the hole: {waited:?}");
        assert!(waited.iter().all(|t| *t < Duration::from_millis(1800)), "{protocol}: {waited:?}");
        svc.stop().await?;
    }
    Ok(())
}

/// Only the server's own 503 (at its in-flight limit, or stopping) is
/// retried, on another node; a 503 a handler returns is the answer. Node A
/// is held at its limit of one call in flight, node B is free; roundrobin
/// makes every other call try A first.
#[tokio::test]
async fn a_servers_own_503_is_retried_on_another_node_and_a_handlers_is_not() -> TestResult {
    let world = "rpc-503";
    let handler_calls = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(tokio::sync::Notify::new());
    let mut nodes = Vec::new();
    for (name, limit) in [("a", 1), ("b", 64)] {
        let svc =
            Service::builder("busy").flags(Flags { server_max_in_flight: Some(limit), ..flags(world) }).build()?;
        svc.handle("Busy.Who", move |_: Hello| async move { Ok::<_, Error>(name.to_string()) })?;
        let s = started.clone();
        svc.handle("Busy.Hold", move |r: Sleep| {
            s.notify_one();
            async move {
                tokio::time::sleep(Duration::from_millis(r.ms)).await;
                Ok::<_, Error>(name.to_string())
            }
        })?;
        let n = handler_calls.clone();
        svc.handle("Busy.Unavailable", move |_: Hello| {
            n.fetch_add(1, Ordering::SeqCst);
            async move { Err::<String, _>(Error::new("busy", "the handler says no", 503)) }
        })?;
        svc.start().await?;
        nodes.push(svc);
    }
    // Node A's one slot is taken for the rest of the test.
    let a = nodes[0].server().service().nodes[0].address.clone();
    let holder = caller(world)?;
    let hold = tokio::spawn(async move {
        let opts = CallOptions { address: Some(a), ..Default::default() };
        holder.client().call_with::<_, String>("busy", "Busy.Hold", &Sleep { ms: 4_000 }, HashMap::new(), opts).await
    });
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await?;

    let rr = |retries| Flags { selector: Some("roundrobin".into()), client_retries: Some(retries), ..flags(world) };
    let c = Service::builder("caller").flags(rr(1)).build()?;
    for i in 0..10 {
        let who: String = c.client().call("busy", "Busy.Who", &Hello { name: format!("{i}") }).await?;
        assert_eq!(who, "b", "call {i}: A is at its limit, so B answers every call");
    }
    // Without retries, A's turns fail with A's own refusal.
    let c0 = Service::builder("caller").flags(rr(0)).build()?;
    let mut refused = 0;
    for _ in 0..10 {
        match c0.client().call::<_, String>("busy", "Busy.Who", &Hello { name: "x".into() }).await {
            Ok(who) => assert_eq!(who, "b"),
            Err(e) => {
                assert_eq!((e.code, e.id.as_str()), (503, "go.micro.server"), "{e}");
                assert!(e.detail.contains("server busy"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 5, "every other call went to A first");
    // A handler's 503 is its answer: returned at once, never retried.
    let c3 = Service::builder("caller").flags(rr(3)).build()?;
    let e = c3.client().call::<_, String>("busy", "Busy.Unavailable", &Hello { name: "x".into() }).await.err();
    assert_eq!(e.as_ref().map(|e| (e.code, e.id.as_str())), Some((503, "busy")), "{e:?}");
    assert_eq!(handler_calls.load(Ordering::SeqCst), 1, "the handler ran once");
    // Retries and their backoff stay inside the call's one deadline.
    let opts = CallOptions { timeout: Some(Duration::from_millis(300)), retries: Some(50), ..Default::default() };
    let a_only = Service::builder("caller").flags(flags(world)).build()?;
    nodes[1].stop().await?;
    let t0 = Instant::now();
    let e = a_only
        .client()
        .call_with::<_, String>("busy", "Busy.Who", &Hello { name: "x".into() }, HashMap::new(), opts)
        .await
        .err();
    assert!(matches!(e.as_ref().map(|e| e.code), Some(408 | 503)), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "50 retries ran past the 300 ms deadline: {:?}", t0.elapsed());
    hold.abort();
    nodes[0].stop().await?;
    Ok(())
}

#[tokio::test]
async fn direct_address_skips_the_registry() -> TestResult {
    let svc = greeter("rpc-direct")?;
    svc.start().await?;
    let addr = svc.server().service().nodes[0].address.clone();
    let c = caller("rpc-direct-other-world")?;
    let opts = CallOptions { address: Some(addr), ..Default::default() };
    let g: Greeting =
        c.client().call_with("greeter", "Greeter.Hello", &Hello { name: "D".into() }, HashMap::new(), opts).await?;
    assert_eq!(g.greeting, "Hello D");
    svc.stop().await?;
    Ok(())
}

/// Adds `Greeter.Hold` (sleeps the request's `ms`); the returned Notify
/// is signalled when a call of it starts running.
fn hold(svc: &Service) -> Result<Arc<tokio::sync::Notify>, micro::Error> {
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    svc.handle("Greeter.Hold", move |r: Sleep| {
        s.notify_one();
        async move {
            tokio::time::sleep(Duration::from_millis(r.ms)).await;
            Ok(Greeting { greeting: "slept".into() })
        }
    })?;
    Ok(started)
}

#[tokio::test]
async fn stop_deregisters_and_drains_in_flight_requests() -> TestResult {
    let svc = Arc::new(greeter("rpc-drain")?);
    // The handler says when it runs: stop comes while it is in flight, not
    // after a guessed delay.
    let started = hold(&svc)?;
    svc.start().await?;
    let c = caller("rpc-drain")?;
    assert_eq!(c.registry().get_service("greeter").await?[0].nodes.len(), 1);
    let client = c.client().clone();
    let slow =
        tokio::spawn(async move { client.call::<_, Greeting>("greeter", "Greeter.Hold", &Sleep { ms: 500 }).await });
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await?;
    svc.stop().await?;
    assert_eq!(slow.await?.map(|g| g.greeting), Ok("slept".to_string()));
    assert_eq!(c.registry().get_service("greeter").await.err().map(|e| e.code), Some(404));
    Ok(())
}

/// Stop waits for calls in flight at most the drain timeout (10 s by
/// default; 300 ms here), then abandons them: a 5 s call does not hold it.
#[tokio::test]
async fn stop_waits_for_calls_in_flight_at_most_the_drain_timeout() -> TestResult {
    let svc =
        Service::builder("greeter").flags(flags("rpc-drain-cap")).drain_timeout(Duration::from_millis(300)).build()?;
    let started = hold(&svc)?;
    svc.start().await?;
    let c = caller("rpc-drain-cap")?;
    let client = c.client().clone();
    let slow =
        tokio::spawn(async move { client.call::<_, Greeting>("greeter", "Greeter.Hold", &Sleep { ms: 5_000 }).await });
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await?;
    let t0 = Instant::now();
    svc.stop().await?;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(300), "stop did not wait for the call: {took:?}");
    assert!(took < Duration::from_secs(4), "stop waited for the 5 s call instead of 300 ms: {took:?}");
    slow.abort();
    Ok(())
}

/// Flags win over what the program set on the builder, as go-micro's do:
/// version, address, metadata; `--server-advertise` is the address that
/// is registered (and dialled), whatever the listener's.
#[tokio::test]
async fn flags_override_the_builder_and_advertise_sets_the_registered_address() -> TestResult {
    let world = "rpc-flags";
    // A listener of the test's own, advertised in place of the service's.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let advertised = front.local_addr()?.to_string();
    let svc = Service::builder("greeter")
        .version("1.0.0")
        .address("127.0.0.1:0")
        .metadata("team", "builder")
        .flags(Flags {
            server_version: Some("2.0.0".into()),
            server_metadata: vec!["team=flags".into(), "zone=a".into()],
            server_advertise: Some(advertised.clone()),
            ..flags(world)
        })
        .build()?;
    svc.handle("Greeter.Hello", |r: Hello| async move { Ok::<_, Error>(Greeting { greeting: r.name }) })?;
    svc.start().await?;
    let got = caller(world)?.registry().get_service("greeter").await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].version, "2.0.0", "--server-version wins over .version()");
    let node = &got[0].nodes[0];
    assert_eq!(node.address, advertised, "the advertised address is registered");
    assert_eq!(node.metadata.get("team").map(String::as_str), Some("flags"));
    assert_eq!(node.metadata.get("zone").map(String::as_str), Some("a"));
    // A caller dials the advertised address, not the listener's.
    let c = caller(world)?;
    let call = tokio::spawn(async move {
        let opts = CallOptions { timeout: Some(Duration::from_millis(500)), retries: Some(0), ..Default::default() };
        c.client()
            .call_with::<_, Greeting>("greeter", "Greeter.Hello", &Hello { name: "x".into() }, HashMap::new(), opts)
            .await
    });
    let (_conn, _) = tokio::time::timeout(Duration::from_secs(10), front.accept()).await??;
    assert!(call.await?.is_err_and(|e| e.code == 408), "the advertised front never answers: the call times out");
    svc.stop().await?;
    Ok(())
}

#[derive(Serialize, Deserialize, Clone)]
struct Event {
    n: usize,
}

#[tokio::test]
async fn pub_sub_between_two_services_with_a_queue_group() -> TestResult {
    let world = "rpc-pubsub";
    let all = Arc::new(AtomicUsize::new(0));
    let group = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut services = Vec::new();
    for g in &group {
        let svc = Service::builder("worker").flags(flags(world)).build()?;
        let g = g.clone();
        svc.subscribe_queue("jobs", "workers", move |_: Event| {
            let g = g.clone();
            async move {
                g.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })?;
        svc.start().await?;
        services.push(svc);
    }
    let audit = Service::builder("audit").flags(flags(world)).build()?;
    let a = all.clone();
    audit.subscribe("jobs", move |e: Event| {
        let a = a.clone();
        async move {
            a.fetch_add(e.n, Ordering::SeqCst);
            Ok(())
        }
    })?;
    audit.start().await?;
    let publisher = caller(world)?;
    for _ in 0..50 {
        publisher.client().publish("jobs", &Event { n: 1 }).await?;
    }
    assert_eq!(all.load(Ordering::SeqCst), 50);
    let (a, b) = (group[0].load(Ordering::SeqCst), group[1].load(Ordering::SeqCst));
    assert_eq!(a + b, 50, "each message to exactly one worker");
    assert!(a > 0 && b > 0, "both workers share the queue: {a}/{b}");
    // The subscription is advertised as an endpoint.
    let rec = audit.registry().get_service("audit").await?;
    assert!(rec[0].endpoints.iter().any(|e| e.metadata.get("topic").map(String::as_str) == Some("jobs")));
    for s in &services {
        s.stop().await?;
    }
    audit.stop().await?;
    Ok(())
}

#[tokio::test]
async fn unknown_component_names_are_listed() {
    let e = Service::builder("x")
        .flags(Flags { transport: Some("quic".into()), ..Flags::default() })
        .build()
        .err()
        .map(|e| e.to_string());
    assert_eq!(e.as_deref(), Some("unknown transport \"quic\"; available: tcp"));
}

#[tokio::test]
async fn handler_names_must_be_handler_dot_method() -> TestResult {
    let svc = caller("rpc-names")?;
    let e = svc.handle("Hello", |_: Hello| async { Ok(0) }).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("Handler.Method"), "{e}");
    Ok(())
}

/// IPv6: a server bound to `[::1]:0` registers `[::1]:PORT` (brackets and
/// all), a call by name dials it, both protocols; the HTTP broker listening
/// on `[::1]:0` is posted to there.
#[tokio::test]
async fn ipv6_addresses_are_registered_dialled_and_posted_to() -> TestResult {
    // grpc is a feature (on in the workspace's test run).
    let protocols: &[&str] = if cfg!(feature = "grpc") { &["mucp", "grpc"] } else { &["mucp"] };
    for &protocol in protocols {
        let world = format!("ipv6-{protocol}-{}", std::process::id());
        let mut f = flags(&world);
        f.server = Some(protocol.into());
        f.client = Some(protocol.into());
        f.server_address = Some("[::1]:0".into());
        f.broker = Some("http".into());
        f.broker_address = Some("[::1]:0".into());
        let svc = Service::builder("v6").flags(f.clone()).build()?;
        svc.handle("V6.Hello", |r: Hello| async move {
            Ok::<_, Error>(Greeting { greeting: format!("Hello {}", r.name) })
        })?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<serde_json::Value>(1);
        svc.subscribe("v6.events", move |v: serde_json::Value| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v).await;
                Ok(())
            }
        })?;
        svc.start().await?;
        let addr = svc.server().service().nodes.first().map(|n| n.address.clone()).ok_or("no node")?;
        assert!(addr.starts_with("[::1]:"), "{protocol} registered {addr}");
        let client = Service::builder("v6-client").flags(f).build()?;
        let r: Greeting = client.client().call("v6", "V6.Hello", &Hello { name: "six".into() }).await?;
        assert_eq!(r.greeting, "Hello six", "{protocol}");
        client.client().publish("v6.events", &serde_json::json!({ "over": "ipv6" })).await?;
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.ok_or("no event")?;
        assert_eq!(got["over"], "ipv6");
        svc.stop().await?;
    }
    Ok(())
}

/// The grpc client keeps as many HTTP/2 connections to a node as
/// `with_connections` says, and spreads concurrent calls over them: counted
/// by micro-testkit's proxy, which the service advertises. (Its default
/// comes from `MICRO_CLIENT_CONNECTIONS` through the function the mucp
/// client uses, tested end to end by the CLI test
/// `micro_client_connections_sets_the_connections_per_node`.)
#[cfg(feature = "grpc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_client_opens_the_connections_it_is_told() -> TestResult {
    let world = "rpc-grpc-connections";
    let upstream = format!("127.0.0.1:{}", micro_testkit::free_port().map_err(|e| e.to_string())?);
    let proxy = micro_testkit::proxy::Proxy::start("127.0.0.1:0", &upstream).map_err(|e| e.to_string())?;
    let svc = Service::builder("sleeper")
        .flags(Flags {
            server: Some("grpc".into()),
            server_address: Some(upstream.clone()),
            server_advertise: Some(proxy.addr().to_string()),
            ..flags(world)
        })
        .build()?;
    svc.handle("Sleeper.Sleep", |r: Sleep| async move {
        tokio::time::sleep(Duration::from_millis(r.ms)).await;
        Ok::<_, Error>(Greeting { greeting: "slept".into() })
    })?;
    svc.start().await?;
    let c = caller(world)?;
    for n in [3, 1] {
        let client = Arc::new(
            micro::grpc::GrpcClient::new(micro::core::ClientOptions {
                selector: c.selector().clone(),
                transport: c.transport().clone(),
                broker: c.broker().clone(),
                retries: 0,
                request_timeout: Duration::from_secs(10),
                pool_size: 1,
                pool_ttl: Duration::from_secs(60),
                tls: Default::default(),
            })?
            .with_connections(n),
        );
        let before = proxy.accepted();
        // 12 calls at once, each held 200 ms by the handler: the later ones
        // find the first connection busy and take the next.
        let calls = (0..12).map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let req = micro::core::Request {
                    service: "sleeper".into(),
                    endpoint: "Sleeper.Sleep".into(),
                    content_type: "application/json".into(),
                    body: br#"{"ms":200}"#.to_vec().into(),
                    metadata: HashMap::new(),
                };
                micro::core::Client::call(&*client, req, CallOptions::default()).await
            })
        });
        for call in calls.collect::<Vec<_>>() {
            tokio::time::timeout(Duration::from_secs(20), call).await???;
        }
        assert_eq!(proxy.accepted() - before, n, "with_connections({n})");
    }
    svc.stop().await?;
    Ok(())
}
