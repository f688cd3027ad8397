//! The generated micro client calls a plain tonic server generated from the
//! same greeter.proto (tonic-prost-build): with the `.proto`'s own paths
//! (`GrpcPaths::Package`) it reaches `/greeter.Greeter/Hello` whatever name
//! it was given; with go-micro's paths the service name is the path's
//! package, as a go-micro client calls.

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod tonic_pb {
    include!(concat!(env!("OUT_DIR"), "/tonic/greeter.rs"));
}

use micro::core::CallOptions;
use micro::{Flags, Service};
use std::pin::Pin;
use tonic_pb::greeter_server::{Greeter, GreeterServer};
use tonic_pb::{CountReply, CountRequest, HelloReply, HelloRequest, SumReply, SumRequest};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

struct Plain;

#[tonic::async_trait]
impl Greeter for Plain {
    async fn hello(&self, req: tonic::Request<HelloRequest>) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        Ok(tonic::Response::new(HelloReply { greeting: format!("tonic says hello to {}", req.into_inner().name) }))
    }
    type CountStream = Stream<CountReply>;
    async fn count(
        &self,
        req: tonic::Request<CountRequest>,
    ) -> Result<tonic::Response<Self::CountStream>, tonic::Status> {
        let n = req.into_inner().n;
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter((1..=n).map(|i| Ok(CountReply { i }))))))
    }
    async fn sum(
        &self,
        req: tonic::Request<tonic::Streaming<SumRequest>>,
    ) -> Result<tonic::Response<SumReply>, tonic::Status> {
        let mut s = req.into_inner();
        let mut reply = SumReply::default();
        while let Some(r) = s.message().await? {
            reply.total += r.value;
            reply.count += 1;
        }
        Ok(tonic::Response::new(reply))
    }
    type ChatStream = Stream<HelloReply>;
    async fn chat(
        &self,
        _: tonic::Request<tonic::Streaming<HelloRequest>>,
    ) -> Result<tonic::Response<Self::ChatStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn the_generated_client_calls_a_tonic_server() -> TestResult {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GreeterServer::new(Plain))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let flags =
        Flags { client: Some("grpc".into()), ..Flags::memory(&format!("tonic-interop-{}", std::process::id())) };
    let caller = Service::builder("caller").flags(flags).build()?;
    let at = || CallOptions { address: Some(addr.clone()), ..Default::default() };

    // The .proto's own paths: any service name.
    let pkg = proto_greeter::pb_package::GreeterClient::new("whatever-it-is-called", caller.client().clone());
    let r = pkg
        .hello_with(
            proto_greeter::pb_package::HelloRequest { name: "micro".into(), ..Default::default() },
            Default::default(),
            at(),
        )
        .await?;
    assert_eq!(r.greeting, "tonic says hello to micro");
    let mut count = pkg.count_with(proto_greeter::pb_package::CountRequest { n: 3 }, Default::default(), at()).await?;
    let mut got = Vec::new();
    while let Some(r) = count.recv().await? {
        got.push(r.i);
    }
    assert_eq!(got, [1, 2, 3]);
    let mut sum = pkg.sum_with(Default::default(), at()).await?;
    for value in [20, 22] {
        sum.send(proto_greeter::pb_package::SumRequest { value }).await?;
    }
    sum.close_send();
    assert_eq!(sum.recv().await?.ok_or("no sum")?.total, 42);

    // go-micro's paths: the service name is the path's package. Named
    // `greeter` (the .proto's package) it reaches tonic; named otherwise,
    // tonic has no such path.
    let named = proto_greeter::pb::GreeterClient::new("greeter", caller.client().clone());
    let r = named
        .hello_with(
            proto_greeter::pb::HelloRequest { name: "go-micro".into(), ..Default::default() },
            Default::default(),
            at(),
        )
        .await?;
    assert_eq!(r.greeting, "tonic says hello to go-micro");
    let other = proto_greeter::pb::GreeterClient::new("greeter-svc", caller.client().clone());
    let e = other
        .hello_with(proto_greeter::pb::HelloRequest::default(), Default::default(), at())
        .await
        .expect_err("tonic serves no /greeter-svc.Greeter/Hello");
    assert_eq!(e.code, 501, "{e:?}");
    server.abort();
    Ok(())
}
