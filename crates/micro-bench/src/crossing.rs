//! `crossing`: what the plugin boundary's own code costs per call, with no
//! network and no library: a client exported and imported in this process
//! (`micro_plugin::proxy::{export_client, import_client}`, the code both
//! ends of a client plugin run) against the same client called directly.
//!
//! One thread runs everything (a current-thread runtime), so wall time per
//! call is CPU time per call, and the difference between the two is the
//! crossing: the request encoded and decoded, the call's future boxed and
//! polled through C function pointers, its waker bridged, the response
//! encoded and decoded. The client yields once per call, so every call
//! goes through the waker path (pending, woken, polled again) as a call
//! waiting for the network does. It is steadier than `rpc`'s calls/s,
//! which move with the batching of two processes sharing the cores, so it
//! suits A/B comparisons of changes to the boundary. What it leaves out:
//! the separate copy of tokio a real plugin has (its thread-locals reached
//! through `__tls_get_addr`), and the transport's own crossings.

use micro::core::{async_trait, CallOptions, Client, Message, Request, Response, Result};
use std::sync::Arc;
use std::time::Instant;

/// Answers with the request's body after yielding once.
struct Echo;

#[async_trait]
impl Client for Echo {
    async fn call(&self, req: Request, _: CallOptions) -> Result<Response> {
        tokio::task::yield_now().await;
        Ok(Response { content_type: req.content_type, body: req.body, metadata: req.metadata })
    }
    async fn publish(&self, _: &str, _: Message) -> Result<()> {
        Ok(())
    }
    fn name(&self) -> &str {
        "echo"
    }
}

/// Nanoseconds per call of `calls` calls made by `callers` concurrent tasks.
async fn measure(client: &Arc<dyn Client>, calls: usize, callers: usize) -> anyhow::Result<f64> {
    let body = bytes::Bytes::from(vec![b'x'; 64]);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let (client, body) = (client.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..calls / callers {
                let req = Request {
                    service: "greeter".into(),
                    endpoint: "Greeter.Hello".into(),
                    content_type: "application/json".into(),
                    body: body.clone(),
                    metadata: Default::default(),
                };
                client.call(req, CallOptions::default()).await?;
            }
            Ok::<_, micro::core::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed().as_nanos() as f64 / ((calls / callers) * callers) as f64)
}

/// Runs `rounds` rounds, direct and crossed alternating, and prints the medians.
pub(crate) fn run(calls: usize, callers: usize, rounds: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let direct: Arc<dyn Client> = Arc::new(Echo);
        // Exported inside the runtime, as a plugin's objects are.
        let crossed = micro_plugin::proxy::import_client(micro_plugin::proxy::export_client(Arc::new(Echo)))?;
        // Warm-up: allocator caches, spare waker bridges.
        measure(&direct, calls / 10, callers).await?;
        measure(&crossed, calls / 10, callers).await?;
        let (mut d, mut c) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            d.push(measure(&direct, calls, callers).await?);
            c.push(measure(&crossed, calls, callers).await?);
            eprintln!("round {round}: direct {:.0} ns/call, crossed {:.0} ns/call", d[round - 1], c[round - 1]);
        }
        let (d, c) = (crate::rpc::median(&d), crate::rpc::median(&c));
        println!("\n### The boundary's own cost per call ({calls} calls, {callers} callers, one thread, median of {rounds} rounds)\n");
        println!("| client | ns per call |\n|---|---:|");
        println!("| called directly | {d:.0} |\n| exported and imported in-process | {c:.0} |\n| the crossing | {:.0} |", c - d);
        Ok(())
    })
}
