//! The greeter of the gRPC interoperability tests, twice: as micro handlers
//! ([`serve_micro`], for micro's `grpc` server) and as a plain tonic service
//! that knows nothing of micro ([`PlainGreeter`]). Both implement
//! `proto/greeter.proto`.

use micro::codec::Proto;
use micro::core::Error;
use micro::{Context, Service, TypedStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The generated messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("greeter");
}

use pb::{CountReply, CountRequest, HelloReply, HelloRequest, SlowRequest};

/// How many `Greeter.Slow` calls the server gave up on before they finished
/// (because the caller's deadline passed).
#[derive(Debug, Default, Clone)]
pub struct Abandoned(Arc<AtomicUsize>);

impl Abandoned {
    /// The count so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

struct Unfinished(Option<Arc<AtomicUsize>>);

impl Unfinished {
    fn finish(&mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn greeting(ctx: &Context, name: &str) -> String {
    match ctx.metadata.get("x-caller") {
        Some(c) => format!("Hello {name} (from {c})"),
        None => format!("Hello {name}"),
    }
}

/// Adds the greeter's handlers to a micro service.
pub fn serve_micro(service: &Service) -> Result<Abandoned, micro::Error> {
    service.handle_with_context("Greeter.Hello", |ctx: Context, Proto(req): Proto<HelloRequest>| async move {
        if req.name.is_empty() {
            return Err(Error::bad_request("greeter", "name must not be empty"));
        }
        Ok(Proto(HelloReply { greeting: greeting(&ctx, &req.name) }))
    })?;
    service.handle_stream(
        "Greeter.Count",
        |_ctx, mut s: TypedStream<Proto<CountReply>, Proto<CountRequest>>| async move {
            let Some(Proto(req)) = s.recv().await? else { return Ok(()) };
            for i in 1..=req.n {
                s.send(&Proto(CountReply { i })).await?;
            }
            Ok(())
        },
    )?;
    let abandoned = Abandoned::default();
    let counter = abandoned.0.clone();
    service.handle("Greeter.Slow", move |Proto(req): Proto<SlowRequest>| {
        let mut guard = Unfinished(Some(counter.clone()));
        async move {
            tokio::time::sleep(Duration::from_millis(u64::from(req.ms).min(10_000))).await;
            guard.finish();
            Ok(Proto(HelloReply { greeting: format!("after {} ms", req.ms) }))
        }
    })?;
    Ok(abandoned)
}

/// The greeter as a plain tonic service.
#[derive(Debug, Default)]
pub struct PlainGreeter;

#[tonic::async_trait]
impl pb::greeter_server::Greeter for PlainGreeter {
    async fn hello(&self, req: tonic::Request<HelloRequest>) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let caller = req.metadata().get("x-caller").and_then(|v| v.to_str().ok()).map(String::from);
        let name = req.into_inner().name;
        if name == "nobody" {
            return Err(tonic::Status::not_found("no such person: nobody"));
        }
        let greeting = match caller {
            Some(c) => format!("Hi {name} (from {c})"),
            None => format!("Hi {name}"),
        };
        Ok(tonic::Response::new(HelloReply { greeting }))
    }

    type CountStream = futures::stream::BoxStream<'static, Result<CountReply, tonic::Status>>;

    async fn count(
        &self,
        req: tonic::Request<CountRequest>,
    ) -> Result<tonic::Response<Self::CountStream>, tonic::Status> {
        let n = req.into_inner().n;
        let s = futures::stream::iter((1..=n).map(|i| Ok(CountReply { i })));
        Ok(tonic::Response::new(Box::pin(s)))
    }

    async fn slow(&self, req: tonic::Request<SlowRequest>) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let ms = req.into_inner().ms;
        tokio::time::sleep(Duration::from_millis(u64::from(ms).min(10_000))).await;
        Ok(tonic::Response::new(HelloReply { greeting: format!("after {ms} ms") }))
    }
}

/// Serves [`PlainGreeter`] with tonic's own server on a free loopback port;
/// returns its address. The server lives as long as the runtime.
pub async fn serve_plain() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let server = tonic::transport::Server::builder()
            .add_service(pb::greeter_server::GreeterServer::new(PlainGreeter))
            .serve_with_incoming(incoming);
        if let Err(e) = server.await {
            eprintln!("plain tonic server: {e}");
        }
    });
    Ok(addr)
}
