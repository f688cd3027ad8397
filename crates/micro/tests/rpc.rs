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
    Flags {
        registry: Some("memory".into()),
        registry_address: Some(world.into()),
        broker: Some("memory".into()),
        broker_address: Some(world.into()),
        ..Flags::default()
    }
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

#[tokio::test]
async fn stop_deregisters_and_drains_in_flight_requests() -> TestResult {
    let svc = Arc::new(greeter("rpc-drain")?);
    svc.start().await?;
    let c = caller("rpc-drain")?;
    assert_eq!(c.registry().get_service("greeter").await?[0].nodes.len(), 1);
    let client = c.client().clone();
    let slow =
        tokio::spawn(async move { client.call::<_, Greeting>("greeter", "Greeter.Sleep", &Sleep { ms: 500 }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    svc.stop().await?;
    assert_eq!(slow.await?.map(|g| g.greeting), Ok("slept".to_string()));
    assert_eq!(c.registry().get_service("greeter").await.err().map(|e| e.code), Some(404));
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
