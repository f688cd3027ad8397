//! `tcpx`: an example transport plugin: micro's TCP transport, built into
//! the plugin (its own copy, on the plugin's own runtime) under the name
//! `tcpx`, logging each listen. It is what the benchmarks compare with the
//! built-in `tcp` to measure the cost of the plugin boundary.

use micro::core::{async_trait, Listener, Result, Socket, Transport, TransportOptions};
use micro::transport::TcpTransport;
use std::sync::Arc;

struct Tcpx(TcpTransport);

/// The plugin's NewFunc.
pub fn new_transport(opts: TransportOptions) -> Result<Arc<dyn Transport>> {
    Ok(Arc::new(Tcpx(TcpTransport::new(opts))))
}

#[async_trait]
impl Transport for Tcpx {
    async fn dial(&self, addr: &str) -> Result<Box<dyn Socket>> {
        self.0.dial(addr).await
    }
    async fn listen(&self, addr: &str) -> Result<Box<dyn Listener>> {
        let l = self.0.listen(addr).await?;
        tracing::info!(addr = %l.addr(), "tcpx listening");
        Ok(l)
    }
    fn name(&self) -> &str {
        "tcpx"
    }
}
