//! The greeter: micro's example service, used by the quick start and the
//! process-level tests.

use micro::core::Error;
use micro::{Flags, Service};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `Greeter.Hello` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloRequest {
    /// Who to greet.
    pub name: String,
}

/// `Greeter.Hello` response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloResponse {
    /// The greeting.
    pub greeting: String,
}

/// `Greeter.Sleep` request: holds the call for a while (to show draining).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SleepRequest {
    /// Milliseconds to sleep, at most 60000.
    pub ms: u64,
}

/// `Greeter.Whoami` response: which node answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhoamiResponse {
    /// The node id.
    pub id: String,
}

/// `Greeter.Count` request: how far to count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CountRequest {
    /// Count from 1 to `n` (at most 10000).
    pub n: u64,
}

/// One `Greeter.Count` response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CountResponse {
    /// The number.
    pub i: u64,
}

/// The greeter service with its handlers, built from `flags`.
pub fn service(flags: Flags) -> Result<Service, micro::Error> {
    let svc = Service::builder("greeter").version("1.0.0").flags(flags).build()?;
    svc.handle("Greeter.Hello", |req: HelloRequest| async move {
        if req.name.trim().is_empty() {
            return Err(Error::bad_request("greeter", "name must not be empty"));
        }
        Ok(HelloResponse { greeting: format!("Hello {}", req.name) })
    })?;
    svc.handle("Greeter.Sleep", |req: SleepRequest| async move {
        if req.ms > 60_000 {
            return Err(Error::bad_request("greeter", "ms must be at most 60000"));
        }
        // Tests wait for this line before signalling the process mid-call.
        tracing::debug!(ms = req.ms, "Greeter.Sleep started");
        tokio::time::sleep(Duration::from_millis(req.ms)).await;
        Ok(HelloResponse { greeting: format!("slept {}ms", req.ms) })
    })?;
    // Server-streaming: one request, `n` responses.
    svc.handle_stream("Greeter.Count", |_ctx, mut s: micro::TypedStream<CountResponse, CountRequest>| async move {
        let Some(req) = s.recv().await? else { return Ok(()) };
        if req.n > 10_000 {
            return Err(Error::bad_request("greeter", "n must be at most 10000"));
        }
        for i in 1..=req.n {
            s.send(&CountResponse { i }).await?;
        }
        Ok(())
    })?;
    // Bidirectional: a greeting for every name, as the names arrive.
    svc.handle_stream("Greeter.Chat", |_ctx, mut s: micro::TypedStream<HelloResponse, HelloRequest>| async move {
        while let Some(req) = s.recv().await? {
            s.send(&HelloResponse { greeting: format!("Hello {}", req.name) }).await?;
        }
        Ok(())
    })?;
    // Client-streaming: names in until the caller ends its side, one greeting out.
    svc.handle_stream("Greeter.Join", |_ctx, mut s: micro::TypedStream<HelloResponse, HelloRequest>| async move {
        let mut names = Vec::new();
        while let Some(req) = s.recv().await? {
            names.push(req.name);
        }
        s.send(&HelloResponse { greeting: format!("Hello {}", names.join(" and ")) }).await?;
        Ok(())
    })?;
    // Pub/sub: count the events published to `greeter.events`; Greeter.Events reports them.
    let events = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = events.clone();
    svc.subscribe("greeter.events", move |_: serde_json::Value| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    })?;
    svc.handle("Greeter.Events", move |_: serde_json::Value| {
        let n = events.load(std::sync::atomic::Ordering::SeqCst);
        async move { Ok(serde_json::json!({ "received": n })) }
    })?;
    let id = svc.server().service().nodes.first().map(|n| n.id.clone()).unwrap_or_default();
    svc.handle("Greeter.Whoami", move |_: serde_json::Value| {
        let id = id.clone();
        async move { Ok(WhoamiResponse { id }) }
    })?;
    // The metadata a call arrived with (what a gateway forwarded, say).
    svc.handle_with_context("Greeter.Metadata", |ctx: micro::Context, _: serde_json::Value| async move {
        Ok(ctx.metadata.into_iter().collect::<std::collections::BTreeMap<String, String>>())
    })?;
    Ok(svc)
}
