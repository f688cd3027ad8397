//! `srvx`: an example server plugin: micro's mucp server (or, with
//! `SRVX_PROTOCOL=grpc`, its gRPC server) built into the plugin under the
//! name `srvx`, logging when it starts. An unrebuilt service serves its
//! handlers, streams included, through it:
//! `micro plugin build --name srvx --type server --path examples/plugins/srvx --new-func new_server -o srvx.so`,
//! then `MICRO_PLUGIN=./srvx.so greeter-service --server srvx`.

use micro::core::{async_trait, Handler, Result, Server, ServerOptions, Service, Subscriber};
use micro::grpc::GrpcServer;
use micro::server::MucpServer;
use std::sync::Arc;

struct Srvx(Arc<dyn Server>);

/// The plugin's NewFunc.
pub fn new_server(opts: ServerOptions) -> Result<Arc<dyn Server>> {
    let grpc = std::env::var("SRVX_PROTOCOL").is_ok_and(|p| p == "grpc");
    tracing::info!(name = %opts.name, protocol = if grpc { "grpc" } else { "mucp" }, "srvx server created");
    let inner: Arc<dyn Server> = if grpc { Arc::new(GrpcServer::new(opts)) } else { Arc::new(MucpServer::new(opts)) };
    Ok(Arc::new(Srvx(inner)))
}

#[async_trait]
impl Server for Srvx {
    fn handle(&self, handler: Handler) -> Result<()> {
        self.0.handle(handler)
    }
    fn subscribe(&self, subscriber: Subscriber) -> Result<()> {
        self.0.subscribe(subscriber)
    }
    async fn start(&self) -> Result<()> {
        self.0.start().await?;
        let service = self.0.service();
        let address = service.nodes.first().map(|n| n.address.as_str()).unwrap_or("");
        tracing::info!(%address, "srvx serving");
        Ok(())
    }
    async fn stop(&self) -> Result<()> {
        self.0.stop().await
    }
    fn service(&self) -> Service {
        // Advertised under its own name, so the registry shows which server a node runs.
        let mut service = self.0.service();
        for node in &mut service.nodes {
            node.metadata.insert("server".into(), "srvx".into());
        }
        service
    }
    fn name(&self) -> &str {
        "srvx"
    }
}
