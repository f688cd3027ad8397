//! A micro service and client generated from `proto/greeter.proto` by
//! `micro-build` (see `build.rs`): the generated `GreeterClient`,
//! `GreeterHandler` and `register_greeter_handler`, and this crate's
//! implementation of the handler.

/// The code generated from `greeter.proto`: messages, client, handler trait.
#[allow(missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/greeter.rs"));
}

use micro::core::{async_trait, Error, Result};
use micro::{Context, MessageStream};
use pb::{CountReply, CountRequest, HelloReply, HelloRequest, SumReply, SumRequest};

/// The greeter's handler.
#[derive(Debug, Default)]
pub struct Greeter;

#[async_trait]
impl pb::GreeterHandler for Greeter {
    async fn hello(&self, _ctx: Context, req: HelloRequest) -> Result<HelloReply> {
        if req.name.trim().is_empty() {
            return Err(Error::bad_request("greeter", "name must not be empty"));
        }
        let from = req.address.map(|a| format!(" from {}", a.city)).unwrap_or_default();
        Ok(HelloReply { greeting: format!("Hello {}{from}", req.name) })
    }

    async fn count(
        &self,
        _ctx: Context,
        req: CountRequest,
        stream: MessageStream<CountReply, CountRequest>,
    ) -> Result<()> {
        if req.n > 10_000 {
            return Err(Error::bad_request("greeter", "n must be at most 10000"));
        }
        for i in 1..=req.n {
            stream.send(CountReply { i }).await?;
        }
        Ok(())
    }

    async fn sum(&self, _ctx: Context, stream: &mut MessageStream<SumReply, SumRequest>) -> Result<SumReply> {
        let mut reply = SumReply::default();
        while let Some(r) = stream.recv().await? {
            reply.total += r.value;
            reply.count += 1;
        }
        Ok(reply)
    }

    async fn chat(&self, _ctx: Context, mut stream: MessageStream<HelloReply, HelloRequest>) -> Result<()> {
        while let Some(r) = stream.recv().await? {
            stream.send(HelloReply { greeting: format!("Hello {}", r.name) }).await?;
        }
        Ok(())
    }
}

/// The greeter service, built from `flags`, with the generated handler registered.
pub fn service(flags: micro::Flags) -> std::result::Result<micro::Service, micro::Error> {
    let svc = micro::Service::builder("greeter").version("1.0.0").flags(flags).build()?;
    pb::register_greeter_handler(&svc, Greeter)?;
    Ok(svc)
}

/// The same code generated with the `.proto`'s own gRPC paths
/// (`micro_build::GrpcPaths::Package`): its client calls
/// `/greeter.Greeter/Hello` over grpc whatever the service is registered
/// as, as a server of another toolchain (tonic, grpcio) serves it.
#[allow(missing_docs)]
pub mod pb_package {
    include!(concat!(env!("OUT_DIR"), "/package/greeter.rs"));
}
