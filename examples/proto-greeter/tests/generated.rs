//! The code micro-build generated from greeter.proto, end to end in one
//! process over real loopback sockets: the generated client calls the
//! generated handler by service name (registry and selector) over mucp and
//! grpc, every kind of RPC; JSON reaches the same handler; the endpoint
//! records carry the message shapes.

use micro::core::CallOptions;
use micro::{Flags, Service};
use proto_greeter::pb::{self, Address, CountRequest, GreeterClient, HelloRequest, Mood, SumRequest};
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn flags(world: &str, protocol: &str) -> Flags {
    Flags { server: Some(protocol.into()), client: Some(protocol.into()), ..Flags::memory(world) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_rpc_over_mucp_and_grpc() -> TestResult {
    for protocol in ["mucp", "grpc"] {
        let world = format!("generated-{protocol}-{}", std::process::id());
        let svc = proto_greeter::service(flags(&world, protocol))?;
        svc.start().await?;
        let caller = Service::builder("caller").flags(flags(&world, protocol)).build()?;
        let greeter = GreeterClient::new("greeter", caller.client().clone());

        // Unary, with a nested message, an enum and a repeated field.
        let req = HelloRequest {
            name: "Ada".into(),
            mood: Mood::Happy as i32,
            address: Some(Address { city: "London".into(), country: "UK".into() }),
            nicknames: vec!["Countess".into()],
        };
        assert_eq!(greeter.hello(req).await?.greeting, "Hello Ada from London", "{protocol}");
        // The handler's error reaches the caller as go-micro's error.
        let e = greeter.hello(HelloRequest::default()).await.expect_err("an empty name");
        assert_eq!((e.code, e.detail.as_str()), (400, "name must not be empty"), "{protocol}");
        // Per-call options.
        let opts = CallOptions { timeout: Some(Duration::from_secs(2)), ..Default::default() };
        let r = greeter
            .hello_with(HelloRequest { name: "B".into(), ..Default::default() }, Default::default(), opts)
            .await?;
        assert_eq!(r.greeting, "Hello B");

        // Server streaming.
        let mut count = greeter.count(CountRequest { n: 3 }).await?;
        let mut got = Vec::new();
        while let Some(r) = count.recv().await? {
            got.push(r.i);
        }
        assert_eq!(got, [1, 2, 3], "{protocol}");

        // Client streaming.
        let mut sum = greeter.sum().await?;
        for value in [1, 2, 39] {
            sum.send(SumRequest { value }).await?;
        }
        sum.close_send();
        let reply = sum.recv().await?.ok_or("no sum")?;
        assert_eq!((reply.total, reply.count), (42, 3), "{protocol}");

        // Bidirectional.
        let mut chat = greeter.chat().await?;
        for name in ["x", "y"] {
            chat.send(HelloRequest { name: name.into(), ..Default::default() }).await?;
            assert_eq!(chat.recv().await?.ok_or("no reply")?.greeting, format!("Hello {name}"), "{protocol}");
        }
        chat.close_send();
        assert!(chat.recv().await?.is_none());
        svc.stop().await?;
    }
    Ok(())
}

/// The same handler answers JSON (what `micro call` and the API gateway
/// send): field names as in the .proto, the enum as its number.
#[tokio::test]
async fn json_reaches_the_generated_handler() -> TestResult {
    let world = format!("generated-json-{}", std::process::id());
    let svc = proto_greeter::service(flags(&world, "mucp"))?;
    svc.start().await?;
    let caller = Service::builder("caller").flags(flags(&world, "mucp")).build()?;
    let req = serde_json::json!({ "name": "Json", "mood": 2, "address": { "city": "Paris" } });
    let r: serde_json::Value = caller.client().call("greeter", "Greeter.Hello", &req).await?;
    assert_eq!(r, serde_json::json!({ "greeting": "Hello Json from Paris" }));
    svc.stop().await?;
    Ok(())
}

/// The registered endpoints carry go-micro's Value trees: fields by their
/// proto names, typed as go-micro's extractor types them.
#[tokio::test]
async fn endpoint_records_describe_the_messages() -> TestResult {
    let world = format!("generated-records-{}", std::process::id());
    let svc = proto_greeter::service(flags(&world, "mucp"))?;
    let record = svc.server().service();
    let hello = record.endpoints.iter().find(|e| e.name == "Greeter.Hello").ok_or("no Greeter.Hello")?;
    let req = serde_json::to_value(&hello.request)?;
    assert_eq!(req["name"], "HelloRequest");
    assert_eq!(req["type"], "HelloRequest");
    let fields: Vec<(String, String)> = req["values"]
        .as_array()
        .ok_or("no fields")?
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or_default().into(), v["type"].as_str().unwrap_or_default().into()))
        .collect();
    let want = [("name", "string"), ("mood", "Mood"), ("address", "Address"), ("nicknames", "[]string")];
    assert_eq!(fields, want.map(|(a, b)| (a.to_string(), b.to_string())));
    // The nested message's own fields.
    assert_eq!(req["values"][2]["values"][0]["name"], "city");
    assert_eq!(hello.response.as_ref().map(|r| r.values[0].kind.as_str()), Some("string"));
    // Streams are marked as go-micro marks them; every method is there.
    let names: Vec<&str> = record.endpoints.iter().map(|e| e.name.as_str()).collect();
    for (name, stream) in
        [("Greeter.Count", true), ("Greeter.Sum", true), ("Greeter.Chat", true), ("Greeter.Hello", false)]
    {
        let e = record.endpoints.iter().find(|e| e.name == name).ok_or(format!("{name} missing from {names:?}"))?;
        assert_eq!(e.metadata.get("stream").map(String::as_str) == Some("true"), stream, "{name}");
    }
    assert_eq!(pb::greeter_endpoints().len(), 4);
    Ok(())
}
