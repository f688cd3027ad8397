//! TLS and mutual TLS on the TCP transport, with certificates made by the
//! test: a client with a valid certificate calls; one without, or with a
//! certificate from another CA, is refused; a plain-TCP client to a TLS
//! server fails cleanly (an error, within its deadline). The same for the
//! `grpc` server and client, which take the same `--transport-tls-*` flags.

use micro::core::CallOptions;
use micro::{Flags, Service};
use micro_testkit::certs::{Ca, Usage};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn base(world: &str) -> Flags {
    Flags { client_retries: Some(0), client_request_timeout: Some(Duration::from_secs(3)), ..Flags::memory(world) }
}

async fn call(flags: Flags, addr: &str) -> Result<String, micro::core::Error> {
    let svc = Service::builder("caller")
        .flags(Flags { client: PROTOCOL.with(|p| p.borrow().clone()), ..flags })
        .build()
        .map_err(|e| micro::core::Error::internal("test", e.to_string()))?;
    let opts = CallOptions { address: Some(addr.to_string()), ..Default::default() };
    svc.client().call_with("secure", "Echo.Call", &"hi".to_string(), HashMap::new(), opts).await
}

thread_local! {
    /// The client of the test running on this thread (`None`: the default, mucp).
    static PROTOCOL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() -> TestResult {
    mutual_tls_over(None).await
}

#[cfg(feature = "grpc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_grpc() -> TestResult {
    mutual_tls_over(Some("grpc")).await
}

async fn mutual_tls_over(protocol: Option<&str>) -> TestResult {
    PROTOCOL.with(|p| *p.borrow_mut() = protocol.map(String::from));
    let dir = tempfile::tempdir()?;
    let (ca, ca_pem) = Ca::in_dir(dir.path())?;
    let (srv_cert, srv_key) = ca.leaf(dir.path(), "server", Usage::Server)?.args();
    let (cli_cert, cli_key) = ca.leaf(dir.path(), "client", Usage::Client)?.args();
    let rogue = Ca::new("rogue CA")?;
    let (bad_cert, bad_key) = rogue.leaf(dir.path(), "rogue-client", Usage::Client)?.args();

    let server = Service::builder("secure")
        .flags(Flags {
            transport_tls_cert: Some(srv_cert.clone()),
            transport_tls_key: Some(srv_key.clone()),
            transport_tls_ca: Some(ca_pem.clone()),
            server: protocol.map(String::from),
            ..base("tls-mtls")
        })
        .build()?;
    server.handle("Echo.Call", |s: String| async move { Ok::<_, micro::core::Error>(s) })?;
    server.start().await?;
    let addr = server.server().service().nodes[0].address.clone();

    // A client with a certificate from the CA gets in.
    let good = Flags {
        transport_tls_cert: Some(cli_cert.clone()),
        transport_tls_key: Some(cli_key.clone()),
        transport_tls_ca: Some(ca_pem.clone()),
        ..base("tls-mtls-client")
    };
    assert_eq!(call(good, &addr).await?, "hi");

    // Without a client certificate: refused.
    let no_cert = Flags { transport_tls_ca: Some(ca_pem.clone()), ..base("tls-mtls-client") };
    let e = call(no_cert, &addr).await.err().ok_or("a client without a certificate got in")?;
    assert!(e.detail.contains("connection error"), "{e}");

    // With a certificate from another CA: refused.
    let rogue_flags = Flags {
        transport_tls_cert: Some(bad_cert),
        transport_tls_key: Some(bad_key),
        transport_tls_ca: Some(ca_pem.clone()),
        ..base("tls-mtls-client")
    };
    let e = call(rogue_flags, &addr).await.err().ok_or("a client with a rogue certificate got in")?;
    assert!(e.detail.contains("connection error"), "refused at the handshake, not by a handler: {e}");

    // A plain-TCP client fails cleanly, well within its deadline.
    let t0 = Instant::now();
    let e = call(base("tls-plain-client"), &addr).await.err().ok_or("plain TCP got an answer from a TLS server")?;
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}: {e}", t0.elapsed());
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_tls_and_configuration_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (ca, ca_pem) = Ca::in_dir(dir.path())?;
    let (srv_cert, srv_key) = ca.leaf(dir.path(), "server", Usage::Server)?.args();

    // TLS without client certificates: any client that trusts the CA calls.
    let server = Service::builder("secure")
        .flags(Flags {
            transport_tls_cert: Some(srv_cert.clone()),
            transport_tls_key: Some(srv_key),
            ..base("tls-server-only")
        })
        .build()?;
    server.handle("Echo.Call", |s: String| async move { Ok::<_, micro::core::Error>(s) })?;
    server.start().await?;
    let addr = server.server().service().nodes[0].address.clone();
    assert_eq!(call(Flags { transport_tls_ca: Some(ca_pem.clone()), ..base("tls-so-client") }, &addr).await?, "hi");
    server.stop().await?;

    // Bad settings are refused at start-up with the file named.
    let e = Service::builder("x")
        .flags(Flags { transport_tls_cert: Some(srv_cert.clone()), ..base("tls-bad") })
        .build()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("--transport-tls-cert and --transport-tls-key go together"), "{e}");
    let e = Service::builder("x")
        .flags(Flags { transport_tls_ca: Some("/nonexistent/ca.pem".into()), ..base("tls-bad") })
        .build()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    Ok(())
}

/// A started TLS server (`Echo.Call`, and `Echo.Big` answering up to 3 MiB)
/// with a fresh CA and certificate in `dir`: the service, its address, the CA file.
async fn tls_server(dir: &Path, flags: Flags) -> Result<(Service, String, String), Box<dyn std::error::Error>> {
    let (ca, ca_pem) = Ca::in_dir(dir)?;
    let (cert, key) = ca.leaf(dir, "server", Usage::Server)?.args();
    let server = Service::builder("secure")
        .flags(Flags { transport_tls_cert: Some(cert), transport_tls_key: Some(key), ..flags })
        .build()?;
    server.handle("Echo.Call", |s: String| async move { Ok::<_, micro::core::Error>(s) })?;
    server.handle("Echo.Big", |n: usize| async move { Ok::<_, micro::core::Error>("y".repeat(n.min(3 << 20))) })?;
    server.start().await?;
    let addr = server.server().service().nodes[0].address.clone();
    Ok((server, addr, ca_pem))
}

/// Silent sockets against a TLS server count as connections from accept
/// (not from the end of a handshake they never start): they take every slot
/// of a server capped at 8 (the next is closed on accept), each is closed at
/// the handshake timeout, and then a client calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_sockets_count_from_accept_and_time_out() -> TestResult {
    silent_tls_sockets(None).await
}

/// The same against the gRPC server, whose handshakes are bounded by the
/// first-message timeout.
#[cfg(feature = "grpc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_sockets_count_from_accept_and_time_out_on_grpc() -> TestResult {
    silent_tls_sockets(Some("grpc")).await
}

async fn silent_tls_sockets(protocol: Option<&str>) -> TestResult {
    use tokio::io::AsyncReadExt;
    PROTOCOL.with(|p| *p.borrow_mut() = protocol.map(String::from));
    let dir = tempfile::tempdir()?;
    let extra = Flags {
        transport_read_timeout: Some(Duration::from_secs(1)),
        server_first_message_timeout: Some(Duration::from_secs(1)),
        server_max_connections: Some(8),
        server: protocol.map(String::from),
        ..base("tls-handshakes")
    };
    let (server, addr, ca_pem) = tls_server(dir.path(), extra).await?;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(&addr).await?);
    }
    // Over the cap: closed at once, long before the handshake timeout.
    let t0 = std::time::Instant::now();
    let mut extra = tokio::net::TcpStream::connect(&addr).await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await?.unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t0.elapsed() < Duration::from_millis(900), "closed on accept: {:?}", t0.elapsed());
    // The silent ones are closed at the handshake timeout (1 s).
    for mut s in silent {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await?.unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(call(Flags { transport_tls_ca: Some(ca_pem), ..base("tls-handshakes-client") }, &addr).await?, "hi");
    server.stop().await?;
    Ok(())
}

/// A TLS peer that asks for large replies and never reads them: the server
/// gives up on the stalled write at its idle timeout and closes the
/// connection, and that close (whose TLS close_notify can never be flushed)
/// is bounded too: `ss` shows the connection gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_peer_that_never_reads_is_let_go() -> TestResult {
    use micro::transport::Net;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir()?;
    let extra = Flags { server_idle_timeout: Some(Duration::from_secs(1)), ..base("tls-never-reads") };
    let (server, addr, ca_pem) = tls_server(dir.path(), extra).await?;
    let port = addr.rsplit(':').next().unwrap_or_default().to_string();
    let tls = micro::core::TlsOptions { ca: Some(ca_pem), ..Default::default() };
    let net = micro::transport::tls::TlsNet::new(&tls, Duration::from_secs(5))?;
    let mut conn = net.connect(&addr).await?;
    let mut out = bytes::BytesMut::new();
    for i in 0..16 {
        let id = i.to_string();
        let hs = [
            ("Micro-Id", id.as_str()),
            ("Micro-Service", "secure"),
            ("Micro-Endpoint", "Echo.Big"),
            ("Content-Type", "application/json"),
        ];
        micro::core::frame::encode_parts_prefixed(hs, (2usize << 20).to_string().as_bytes(), &mut out)?;
    }
    conn.stream.write_all(&out).await?;
    conn.stream.flush().await?;
    // 32 MiB of replies that nobody reads: more than the socket buffers hold.
    let established = || -> std::io::Result<usize> {
        let o = std::process::Command::new("ss").args(["-Htn", "state", "established"]).output()?;
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        // The server's side of it: local address the server's, peer ours.
        Ok(text
            .lines()
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() >= 4 && cols[2].ends_with(&format!(":{port}")) && cols[3] == conn.local
            })
            .count())
    };
    assert!(established()? > 0, "the connection is up at first");
    let t0 = std::time::Instant::now();
    while established()? > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the server still holds the connection after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("gone after {:?} (idle timeout 1 s, close bound 5 s)", t0.elapsed());
    drop(conn);
    server.stop().await?;
    Ok(())
}

/// The HTTP broker with the transport's TLS: subscribers listen on TLS
/// (secure nodes), a publisher with a certificate from the CA delivers, and
/// one without a certificate, or without TLS at all, is refused and told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_broker_uses_the_transports_tls() -> TestResult {
    use micro::broker::HttpBroker;
    use micro::core::{Broker, BrokerOptions, Message, SubscribeOptions, TlsOptions};
    let dir = tempfile::tempdir()?;
    let (ca, ca_pem) = Ca::in_dir(dir.path())?;
    let (srv_cert, srv_key) = ca.leaf(dir.path(), "server", Usage::Server)?.args();
    let (cli_cert, cli_key) = ca.leaf(dir.path(), "client", Usage::Client)?.args();
    let reg = std::sync::Arc::new(micro::registry::MemoryRegistry::new());
    let opts =
        |tls: TlsOptions| BrokerOptions { addresses: vec![], registry: Some(reg.clone()), tls, ..Default::default() };
    let sub = HttpBroker::new(opts(TlsOptions { cert: Some(srv_cert), key: Some(srv_key), ca: Some(ca_pem.clone()) }))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler: micro::core::BrokerHandler = std::sync::Arc::new(move |_t: &str, m: Message| {
        let _ = tx.send(m.body);
        micro::core::Handled::ok()
    });
    let _s = sub.subscribe("secure.events", handler, SubscribeOptions::default()).await?;
    let node = micro::core::Registry::get_service(&*reg, micro::broker::http::SERVICE).await?[0].nodes[0].clone();
    assert_eq!(node.metadata.get("secure").map(String::as_str), Some("true"));

    // A publisher with a certificate from the CA (mutual TLS) delivers.
    let good =
        HttpBroker::new(opts(TlsOptions { cert: Some(cli_cert), key: Some(cli_key), ca: Some(ca_pem.clone()) }))?;
    good.publish("secure.events", Message::new(&b"hello"[..])).await?;
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?.ok_or("not delivered")?;
    assert_eq!(&got[..], b"hello");
    // Without a client certificate: the handshake is refused.
    let anon = HttpBroker::new(opts(TlsOptions { ca: Some(ca_pem), ..Default::default() }))?;
    let e =
        anon.publish("secure.events", Message::new(&b"x"[..])).await.err().ok_or("delivered without a certificate")?;
    assert!(e.detail.contains("not delivered to 1 of 1 subscribers"), "{e}");
    // Without TLS at all: told what to set.
    let plain = HttpBroker::new(opts(TlsOptions::default()))?;
    let e = plain.publish("secure.events", Message::new(&b"x"[..])).await.err().ok_or("delivered in plain text")?;
    assert!(e.detail.contains("set --transport-tls-ca"), "{e}");
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err(), "nothing else arrived");
    Ok(())
}
