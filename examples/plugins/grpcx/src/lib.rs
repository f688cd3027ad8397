//! `grpcx`: an example client plugin: micro's gRPC client built into the
//! plugin under the name `grpcx`, logging each stream it opens. An
//! unrebuilt binary calls gRPC services through it:
//! `micro plugin build --name grpcx --type client --path examples/plugins/grpcx --new-func new_client -o grpcx.so`,
//! then `MICRO_PLUGIN=./grpcx.so micro call greeter Greeter.Hello '{"name":"John"}' --client grpcx`.

use micro::core::{async_trait, CallOptions, Client, ClientOptions, Message, Request, Response, Result, Stream};
use micro::grpc::GrpcClient;
use std::sync::Arc;

struct Grpcx(GrpcClient);

/// The plugin's NewFunc.
pub fn new_client(opts: ClientOptions) -> Result<Arc<dyn Client>> {
    tracing::info!("grpcx client created");
    Ok(Arc::new(Grpcx(GrpcClient::new(opts)?)))
}

#[async_trait]
impl Client for Grpcx {
    async fn call(&self, req: Request, opts: CallOptions) -> Result<Response> {
        self.0.call(req, opts).await
    }
    async fn stream(&self, req: Request, opts: CallOptions) -> Result<Stream> {
        tracing::info!(service = %req.service, endpoint = %req.endpoint, "grpcx stream");
        self.0.stream(req, opts).await
    }
    async fn publish(&self, topic: &str, msg: Message) -> Result<()> {
        self.0.publish(topic, msg).await
    }
    fn name(&self) -> &str {
        "grpcx"
    }
}
