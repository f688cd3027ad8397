//! The contenders of the RPC benchmark: each one's echo server, and the
//! callers that call it. Every contender echoes the same payload back.

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use micro::codec::Proto;
use micro::core::{CallOptions, Error};
use micro::{Flags, Service, TypedClient};
use std::collections::HashMap;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::mux;

/// The generated echo service of `proto/bench.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub(crate) mod pb {
    tonic::include_proto!("bench");
}

/// The generated volo-grpc echo service of `proto/bench.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod volo_pb {
    include!(concat!(env!("OUT_DIR"), "/volo_gen.rs"));
}
use volo_pb::volo_gen::bench as vpb;

/// Who is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub(crate) enum Contender {
    /// Raw tokio TCP echo, length-prefixed frames, one connection per caller.
    Ceiling,
    /// Raw tokio TCP echo multiplexed as micro is: two connections shared by
    /// every caller, a writer per connection that coalesces queued frames
    /// into one write, a reader completing callers by id, a server that
    /// reads and writes in batches. The most a multiplexing protocol gets.
    CeilingMux,
    /// tarpc 0.38, bincode over TCP, one shared multiplexed connection.
    Tarpc,
    /// tonic 0.14, one shared Channel.
    Tonic,
    /// volo-grpc 0.12, one shared client.
    Volo,
    /// micro's defaults as the README uses them: mucp over tcp, a JSON
    /// struct body, called by service name through the `local` registry
    /// and the selector.
    Micro,
    /// As `micro`, but to a fixed address (no registry, no selector).
    MicroDirect,
    /// micro's mucp over tcp with protobuf bodies.
    MicroProto,
    /// micro's grpc server and client, protobuf bodies.
    MicroGrpc,
    /// micro's defaults with the transport loaded from the tcpx plugin.
    MicroTcpx,
    /// micro's defaults with the client loaded from the brpc plugin.
    MicroBrpc,
    /// The same brpc client compiled into the binary: what the plugin is
    /// measured against (issue 16: "at least 0.90 of the same client built in").
    MicroBrpcIn,
}

impl Contender {
    /// Every contender, in report order.
    pub(crate) const ALL: [Contender; 12] = [
        Contender::Ceiling,
        Contender::CeilingMux,
        Contender::Tarpc,
        Contender::Tonic,
        Contender::Volo,
        Contender::Micro,
        Contender::MicroDirect,
        Contender::MicroProto,
        Contender::MicroGrpc,
        Contender::MicroTcpx,
        Contender::MicroBrpc,
        Contender::MicroBrpcIn,
    ];

    /// The name on the command line and in tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Contender::Ceiling => "ceiling",
            Contender::CeilingMux => "ceiling-mux",
            Contender::Tarpc => "tarpc",
            Contender::Tonic => "tonic",
            Contender::Volo => "volo",
            Contender::Micro => "micro",
            Contender::MicroDirect => "micro-direct",
            Contender::MicroProto => "micro-proto",
            Contender::MicroGrpc => "micro-grpc",
            Contender::MicroTcpx => "micro-tcpx",
            Contender::MicroBrpc => "micro-brpc",
            Contender::MicroBrpcIn => "micro-brpc-in",
        }
    }

    /// The plugin it needs, if any.
    pub(crate) fn plugin(self) -> Option<&'static str> {
        match self {
            Contender::MicroTcpx => Some("tcpx.so"),
            Contender::MicroBrpc => Some("brpc.so"),
            _ => None,
        }
    }
}

/// Keeps a server alive.
pub(crate) type Guard = Box<dyn std::any::Any + Send>;

/// Starts `c`'s echo server on a free loopback port.
pub(crate) async fn serve(c: Contender, plugins: &Path) -> anyhow::Result<(String, Guard)> {
    match c {
        Contender::Ceiling => {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?.to_string();
            let task = tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(raw_echo(s));
                }
            });
            Ok((addr, Box::new(AbortOnDrop(task))))
        }
        Contender::CeilingMux => {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?.to_string();
            let task = tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(mux::serve(s));
                }
            });
            Ok((addr, Box::new(AbortOnDrop(task))))
        }
        Contender::Tarpc => {
            use tarpc::server::{BaseChannel, Channel};
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?.to_string();
            let task = tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    // tarpc's own tcp helpers leave Nagle on; set TCP_NODELAY as for everyone.
                    let _ = s.set_nodelay(true);
                    let channel = BaseChannel::with_defaults(tarpc_transport(s));
                    tokio::spawn(channel.execute(EchoServer.serve()).for_each(|f| async move {
                        tokio::spawn(f);
                    }));
                }
            });
            Ok((addr, Box::new(AbortOnDrop(task))))
        }
        Contender::Tonic => {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?.to_string();
            let incoming = tokio_stream_incoming(l);
            let task = tokio::spawn(async move {
                let r = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(pb::echo_server::EchoServer::new(TonicEcho))
                    .serve_with_incoming(incoming)
                    .await;
                if let Err(e) = r {
                    eprintln!("tonic server: {e}");
                }
            });
            Ok((addr, Box::new(AbortOnDrop(task))))
        }
        Contender::Volo => {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?.to_string();
            let task = tokio::spawn(async move {
                let incoming = volo::net::incoming::DefaultIncoming::from(l);
                let r = volo_grpc::server::Server::new()
                    .add_service(volo_grpc::server::ServiceBuilder::new(vpb::EchoServer::new(VoloEcho)).build())
                    .run(incoming)
                    .await;
                if let Err(e) = r {
                    eprintln!("volo server: {e}");
                }
            });
            Ok((addr, Box::new(AbortOnDrop(task))))
        }
        _ => {
            let svc = Service::builder("bench").catalog(catalog()).flags(micro_flags(c, plugins, 0, true)?).build()?;
            svc.handle("Bench.Echo", |m: EchoMsg| async move { Ok::<_, Error>(m) })?;
            svc.handle("Echo.Echo", |p: Proto<pb::Payload>| async move { Ok::<_, Error>(p) })?;
            svc.handle("Work.Spin", |ms: u64| async move {
                spin(ms);
                Ok::<_, Error>(ms)
            })?;
            svc.handle("Work.Ping", |n: u64| async move { Ok::<_, Error>(n) })?;
            svc.start().await?;
            let addr = svc.server().service().nodes.first().map(|n| n.address.clone()).context("no address")?;
            Ok((addr, Box::new(svc)))
        }
    }
}

/// The JSON struct body of `micro`'s echo, as a README user would write one.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct EchoMsg {
    text: String,
}

/// Computes for `ms` milliseconds without awaiting (a CPU-bound handler).
pub(crate) fn spin(ms: u64) {
    let start = std::time::Instant::now();
    let d = std::time::Duration::from_millis(ms);
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The environment variable naming the `local` registry directory that
/// a run's server and client processes share.
pub(crate) const REGISTRY_ENV: &str = "MICRO_BENCH_REGISTRY";

/// The flags of a micro contender: its components, and a registry. The
/// user's path is the default `local` registry (in a directory of this
/// run's, shared by its server and client processes); `micro-direct`
/// dials a fixed address instead and registers in memory only.
pub(crate) fn micro_flags(c: Contender, plugins: &Path, callers: usize, server: bool) -> anyhow::Result<Flags> {
    let shared = std::env::var(REGISTRY_ENV).ok().filter(|_| c != Contender::MicroDirect);
    let mut f = Flags {
        registry: Some(if shared.is_some() { "local" } else { "memory" }.into()),
        registry_address: Some(shared.unwrap_or_else(|| format!("bench-{}", std::process::id()))),
        client_pool_size: Some(callers.max(1)),
        ..Flags::default()
    };
    match c {
        Contender::MicroGrpc => {
            f.server = Some("grpc".into());
            f.client = Some("grpc".into());
        }
        Contender::MicroTcpx => {
            f.plugin = vec![plugins.join("tcpx.so").display().to_string()];
            f.transport = Some("tcpx".into());
        }
        Contender::MicroBrpc if !server => {
            f.plugin = vec![plugins.join("brpc.so").display().to_string()];
            f.client = Some("brpc".into());
        }
        Contender::MicroBrpcIn if !server => f.client = Some(BRPC_IN.into()),
        _ => {}
    }
    for p in &f.plugin {
        anyhow::ensure!(Path::new(p).is_file(), "{} needs the plugin {p}: build it first (scripts/bench.sh)", c.name());
    }
    Ok(f)
}

/// The name of the brpc client compiled into this binary.
pub(crate) const BRPC_IN: &str = "brpc-in";

/// micro's built-in components plus the brpc example client compiled in
/// (as `brpc-in`), so a plugin is compared with the very same code.
pub(crate) fn catalog() -> micro::Catalog {
    let mut c = micro::catalog::builtin();
    c.clients.insert(BRPC_IN, std::sync::Arc::new(brpc::new_client));
    c
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn tokio_stream_incoming(l: TcpListener) -> impl futures::Stream<Item = std::io::Result<TcpStream>> + Send + 'static {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}

/// The ceiling's server side: read a frame, write it back, in one write.
async fn raw_echo(s: TcpStream) {
    let _ = s.set_nodelay(true);
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut buf = Vec::new();
    loop {
        let Ok(n) = r.read_u32().await else { return };
        buf.clear();
        buf.extend_from_slice(&n.to_be_bytes());
        buf.resize(4 + n as usize, 0);
        if r.read_exact(&mut buf[4..]).await.is_err() || w.write_all(&buf).await.is_err() {
            return;
        }
    }
}

#[tarpc::service]
pub(crate) trait Echo {
    async fn echo(payload: Bytes) -> Bytes;
    /// Computes for `ms` milliseconds without awaiting (the `hol` probe).
    async fn spin(ms: u64) -> u64;
    /// Answers at once (the `hol` probe).
    async fn ping(n: u64) -> u64;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: tarpc::context::Context, payload: Bytes) -> Bytes {
        payload
    }
    async fn spin(self, _: tarpc::context::Context, ms: u64) -> u64 {
        spin(ms);
        ms
    }
    async fn ping(self, _: tarpc::context::Context, n: u64) -> u64 {
        n
    }
}

type TarpcTransport<Item, SinkItem> =
    tarpc::serde_transport::Transport<TcpStream, Item, SinkItem, tarpc::tokio_serde::formats::Bincode<Item, SinkItem>>;

pub(crate) fn tarpc_transport<Item, SinkItem>(s: TcpStream) -> TarpcTransport<Item, SinkItem>
where
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
{
    let framed = tarpc::tokio_util::codec::Framed::new(s, tarpc::tokio_util::codec::LengthDelimitedCodec::new());
    tarpc::serde_transport::new(framed, tarpc::tokio_serde::formats::Bincode::default())
}

struct TonicEcho;

#[tonic::async_trait]
impl pb::echo_server::Echo for TonicEcho {
    async fn echo(&self, req: tonic::Request<pb::Payload>) -> Result<tonic::Response<pb::Payload>, tonic::Status> {
        Ok(tonic::Response::new(req.into_inner()))
    }
}

/// Makes one call; each caller task owns one.
#[async_trait::async_trait]
pub(crate) trait Caller: Send {
    /// One echo call of the benchmark's payload.
    async fn call(&mut self) -> anyhow::Result<()>;
}

/// `callers` callers of `c`'s server at `addr`, each sending `payload` bytes.
pub(crate) async fn connect(
    c: Contender,
    addr: &str,
    callers: usize,
    payload: usize,
    plugins: &Path,
) -> anyhow::Result<(Vec<Box<dyn Caller>>, Guard)> {
    let data = Bytes::from(vec![b'x'; payload]);
    let mut out: Vec<Box<dyn Caller>> = Vec::with_capacity(callers);
    let guard: Guard = match c {
        Contender::Ceiling => {
            for _ in 0..callers {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let mut frame = (payload as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&data);
                out.push(Box::new(RawCaller { s: BufReader::with_capacity(64 * 1024, s), frame, buf: Vec::new() }));
            }
            Box::new(())
        }
        Contender::CeilingMux => {
            let conns = [mux::Client::connect(addr).await?, mux::Client::connect(addr).await?];
            for i in 0..callers {
                out.push(Box::new(MuxCaller { conn: conns[i % conns.len()].clone(), data: data.clone() }));
            }
            Box::new(())
        }
        Contender::Tarpc => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let client = EchoClient::new(tarpc::client::Config::default(), tarpc_transport(s)).spawn();
            for _ in 0..callers {
                out.push(Box::new(TarpcCaller { client: client.clone(), data: data.clone() }));
            }
            Box::new(())
        }
        Contender::Tonic => {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
            let client = pb::echo_client::EchoClient::new(channel);
            for _ in 0..callers {
                out.push(Box::new(TonicCaller { client: client.clone(), data: data.clone() }));
            }
            Box::new(())
        }
        Contender::Volo => {
            let sa: std::net::SocketAddr = addr.parse()?;
            let client = vpb::EchoClientBuilder::new("bench").address(volo::net::Address::from(sa)).build();
            for _ in 0..callers {
                out.push(Box::new(VoloCaller { client: client.clone(), data: data.clone() }));
            }
            Box::new(())
        }
        _ => {
            let svc = Service::builder("bench-client")
                .catalog(catalog())
                .flags(micro_flags(c, plugins, callers, false)?)
                .build()?;
            // By service name through the registry and selector, unless the
            // servers registered nowhere the client can see (micro-direct).
            let by_name = std::env::var_os(REGISTRY_ENV).is_some() && c != Contender::MicroDirect;
            let opts = CallOptions { address: (!by_name).then(|| addr.to_string()), ..Default::default() };
            let client = match c {
                Contender::MicroProto => svc.client().clone().with_content_type("application/protobuf"),
                Contender::MicroGrpc => svc.client().clone().with_content_type("application/grpc"),
                _ => svc.client().clone(),
            };
            let proto = matches!(c, Contender::MicroProto | Contender::MicroGrpc);
            for _ in 0..callers {
                out.push(Box::new(MicroCaller {
                    client: client.clone(),
                    opts: opts.clone(),
                    text: EchoMsg { text: "x".repeat(payload) },
                    proto: proto.then(|| Proto(pb::Payload { data: data.clone() })),
                }));
            }
            Box::new(svc)
        }
    };
    Ok((out, guard))
}

struct RawCaller {
    s: BufReader<TcpStream>,
    frame: Vec<u8>,
    buf: Vec<u8>,
}

#[async_trait::async_trait]
impl Caller for RawCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.s.get_mut().write_all(&self.frame).await?;
        let n = self.s.read_u32().await? as usize;
        self.buf.resize(n, 0);
        self.s.read_exact(&mut self.buf).await?;
        anyhow::ensure!(n + 4 == self.frame.len(), "echo of {n} bytes");
        Ok(())
    }
}

struct MuxCaller {
    conn: mux::Client,
    data: Bytes,
}

#[async_trait::async_trait]
impl Caller for MuxCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let r = self.conn.call(self.data.clone()).await?;
        anyhow::ensure!(r.len() == self.data.len(), "echo of {} bytes", r.len());
        Ok(())
    }
}

struct TarpcCaller {
    client: EchoClient,
    data: Bytes,
}

#[async_trait::async_trait]
impl Caller for TarpcCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let r = self.client.echo(tarpc::context::current(), self.data.clone()).await?;
        anyhow::ensure!(r.len() == self.data.len(), "echo of {} bytes", r.len());
        Ok(())
    }
}

struct TonicCaller {
    client: pb::echo_client::EchoClient<tonic::transport::Channel>,
    data: Bytes,
}

#[async_trait::async_trait]
impl Caller for TonicCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let r = self.client.echo(pb::Payload { data: self.data.clone() }).await?.into_inner();
        anyhow::ensure!(r.data.len() == self.data.len(), "echo of {} bytes", r.data.len());
        Ok(())
    }
}

struct VoloEcho;

impl vpb::Echo for VoloEcho {
    async fn echo(
        &self,
        req: volo_grpc::Request<vpb::Payload>,
    ) -> Result<volo_grpc::Response<vpb::Payload>, volo_grpc::Status> {
        Ok(volo_grpc::Response::new(req.into_inner()))
    }
}

struct VoloCaller {
    client: vpb::EchoClient,
    data: Bytes,
}

#[async_trait::async_trait]
impl Caller for VoloCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let r = self.client.echo(vpb::Payload { data: self.data.clone() }).await?.into_inner();
        anyhow::ensure!(r.data.len() == self.data.len(), "echo of {} bytes", r.data.len());
        Ok(())
    }
}

struct MicroCaller {
    client: TypedClient,
    opts: CallOptions,
    text: EchoMsg,
    proto: Option<Proto<pb::Payload>>,
}

#[async_trait::async_trait]
impl Caller for MicroCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let md = HashMap::new();
        let n = match &self.proto {
            Some(p) => {
                let r: Proto<pb::Payload> =
                    self.client.call_with("bench", "Echo.Echo", p, md, self.opts.clone()).await?;
                r.0.data.len()
            }
            None => {
                let r: EchoMsg =
                    self.client.call_with("bench", "Bench.Echo", &self.text, md, self.opts.clone()).await?;
                r.text.len()
            }
        };
        anyhow::ensure!(n == self.text.text.len(), "echo of {n} bytes");
        Ok(())
    }
}
