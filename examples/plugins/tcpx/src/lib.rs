//! `tcpx`: an example transport plugin: micro's TCP transport built into
//! the plugin under the name `tcpx`, logging each listen. Its sockets live
//! on the host's reactor (`micro::plugin::HostNet`), so an I/O wait wakes
//! the host's task directly; set `TCPX_OWN_RUNTIME=1` to use the plugin's
//! own tokio sockets instead (the benchmarks compare both with the
//! built-in `tcp`).

use micro::core::{async_trait, Listener, Result, Socket, Transport, TransportOptions};
use micro::plugin::HostNet;
use micro::transport::TcpTransport;
use std::sync::Arc;

struct Tcpx(Arc<dyn Transport>);

/// The plugin's NewFunc.
pub fn new_transport(opts: TransportOptions) -> Result<Arc<dyn Transport>> {
    let own = std::env::var("TCPX_OWN_RUNTIME").is_ok_and(|v| v == "1");
    let inner: Arc<dyn Transport> = if own || !micro::plugin::host_sockets_available() {
        Arc::new(TcpTransport::new(opts))
    } else {
        Arc::new(TcpTransport::with_net(opts, HostNet, "tcpx"))
    };
    tracing::info!(host_sockets = !own, "tcpx transport created");
    Ok(Arc::new(Tcpx(inner)))
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
