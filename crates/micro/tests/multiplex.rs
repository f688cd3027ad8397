//! Many calls in flight on one mucp connection: replies find their callers
//! in whatever order they finish, a caller giving up or sending too much
//! disturbs no one else, a go-micro style peer (one call at a time, or
//! pipelined) is served, and transports that cannot split their sockets
//! still work one call per connection, and a handler that computes without
//! ever yielding holds up none of the calls beside it. Real loopback TCP
//! throughout; the transport below only counts dials (and can refuse to split).

use bytes::{Buf, BytesMut};
use micro::core::{
    async_trait, frame, headers, CallOptions, Error, Listener, Message, Socket, Transport, TransportOptions,
};
use micro::transport::TcpTransport;
use micro::{Flags, Service};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The tcp transport, counting dials; with `split: false` its sockets
/// cannot be split (like a third-party transport without streams).
struct Counting {
    tcp: TcpTransport,
    dials: Arc<AtomicUsize>,
    split: bool,
}

#[async_trait]
impl Transport for Counting {
    async fn dial(&self, addr: &str) -> micro::core::Result<Box<dyn Socket>> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let s = self.tcp.dial(addr).await?;
        Ok(if self.split { s } else { Box::new(Unsplittable(s)) })
    }
    async fn listen(&self, addr: &str) -> micro::core::Result<Box<dyn Listener>> {
        let l = self.tcp.listen(addr).await?;
        Ok(if self.split { l } else { Box::new(UnsplittableListener(l)) })
    }
    fn name(&self) -> &str {
        "counting"
    }
}

struct UnsplittableListener(Box<dyn Listener>);

#[async_trait]
impl Listener for UnsplittableListener {
    fn addr(&self) -> String {
        self.0.addr()
    }
    async fn accept(&self) -> micro::core::Result<Box<dyn Socket>> {
        Ok(Box::new(Unsplittable(self.0.accept().await?)))
    }
}

/// A socket that keeps the default `split` (none).
struct Unsplittable(Box<dyn Socket>);

#[async_trait]
impl Socket for Unsplittable {
    async fn send(&mut self, msg: Message) -> micro::core::Result<()> {
        self.0.send(msg).await
    }
    async fn recv(&mut self) -> micro::core::Result<Message> {
        self.0.recv().await
    }
    async fn close(&mut self) -> micro::core::Result<()> {
        self.0.close().await
    }
    fn local_addr(&self) -> String {
        self.0.local_addr()
    }
    fn remote_addr(&self) -> String {
        self.0.remote_addr()
    }
}

/// A world whose `counting` transport and one-connection `mucp1` client
/// come from the catalog, as a plugin's would.
fn catalog(dials: Arc<AtomicUsize>, split: bool, max: usize) -> micro::Catalog {
    let mut c = micro::catalog::builtin();
    c.transports.insert(
        "counting",
        Arc::new(move |o: TransportOptions| {
            let tcp = TcpTransport::new(TransportOptions { max_message_size: max, ..o });
            Ok(Arc::new(Counting { tcp, dials: dials.clone(), split }) as Arc<dyn Transport>)
        }) as micro::catalog::NewTransport,
    );
    c.clients.insert(
        "mucp1",
        Arc::new(|o| Ok(Arc::new(micro::client::MucpClient::with_connections(o, 1)) as Arc<dyn micro::core::Client>))
            as micro::catalog::NewClient,
    );
    c
}

struct World {
    server: Service,
    client: Service,
    dials: Arc<AtomicUsize>,
    spin: Arc<Spin>,
    /// `Echo.Slow` calls whose handler has started.
    slow_started: Arc<AtomicUsize>,
}

impl World {
    /// Waits (at most 10 s) until `n` `Echo.Slow` handlers have started:
    /// the event itself, not a guess at how long it takes.
    async fn slow_started(&self, n: usize) -> TestResult {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.slow_started.load(Ordering::SeqCst) < n {
            if tokio::time::Instant::now() > deadline {
                return Err(
                    format!("only {} of {n} slow calls started", self.slow_started.load(Ordering::SeqCst)).into()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// The state of `Work.Spin`, a handler that computes without awaiting:
/// `"brief"` spins for 5 ms, `"hold"` until released (at most 10 s), `"block"`
/// sleeps in place (holding its thread, not a core, through `block_in_place`)
/// until released.
#[derive(Default)]
struct Spin {
    started: AtomicUsize,
    spinning: AtomicUsize,
    released: std::sync::atomic::AtomicBool,
}

impl Spin {
    fn run(&self, mode: &str) -> String {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.spinning.fetch_add(1, Ordering::SeqCst);
        let start = std::time::Instant::now();
        let until_released = mode == "hold" || mode == "block";
        let limit = Duration::from_millis(if until_released { 10_000 } else { 5 });
        let mut released = false;
        while start.elapsed() < limit {
            if until_released && self.released.load(Ordering::SeqCst) {
                released = true;
                break;
            }
            if mode == "block" {
                // Holds its thread without taking a core from the tests beside it.
                std::thread::sleep(Duration::from_millis(1));
            } else {
                std::hint::spin_loop();
            }
        }
        self.spinning.fetch_sub(1, Ordering::SeqCst);
        if released { "released" } else { "spun" }.to_string()
    }

    /// Blocks this (non-worker) thread until `n` spins have started: the
    /// runtime's workers may all be spinning, so no timer of theirs can wait.
    fn wait_started(&self, n: usize) -> bool {
        let start = std::time::Instant::now();
        while self.started.load(Ordering::SeqCst) < n {
            if start.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

async fn world(name: &str, split: bool, extra: Flags) -> Result<World, Box<dyn std::error::Error>> {
    let dials = Arc::new(AtomicUsize::new(0));
    let flags = Flags {
        registry: Some("memory".into()),
        registry_address: Some(name.into()),
        broker: Some("memory".into()),
        broker_address: Some(name.into()),
        transport: Some("counting".into()),
        client: Some("mucp1".into()),
        ..extra
    };
    let server =
        Service::builder("echo").flags(flags.clone()).catalog(catalog(dials.clone(), split, 64 * 1024)).build()?;
    server.handle("Echo.Call", |s: String| async move { Ok::<_, Error>(s) })?;
    let slow_started = Arc::new(AtomicUsize::new(0));
    let started = slow_started.clone();
    server.handle("Echo.Slow", move |(ms, s): (u64, String)| {
        started.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Error>(s)
        }
    })?;
    server.handle("Echo.Big", |n: usize| async move { Ok::<_, Error>("y".repeat(n)) })?;
    server.handle_stream("Echo.Stream", |_ctx, mut s: micro::TypedStream<String, String>| async move {
        while let Some(m) = s.recv().await? {
            s.send(&m).await?;
        }
        Ok(())
    })?;
    let spin = Arc::new(Spin::default());
    let s = spin.clone();
    server.handle("Work.Spin", move |mode: String| {
        let s = s.clone();
        async move {
            if mode == "block" {
                // Blocking in place hands the worker's queued tasks to another
                // thread first: a task left in a blocked worker's LIFO slot
                // (the caller whose deadline must fire, say) would wait for it.
                return Ok::<_, Error>(tokio::task::block_in_place(|| s.run(&mode)));
            }
            Ok::<_, Error>(s.run(&mode))
        }
    })?;
    server.start().await?;
    let client = Service::builder("caller").flags(flags).catalog(catalog(dials.clone(), split, 64 * 1024)).build()?;
    Ok(World { server, client, dials, spin, slow_started })
}

#[tokio::test]
async fn overlapping_calls_share_one_connection_and_replies_find_their_callers() -> TestResult {
    let w = world("mux-overlap", true, Flags::default()).await?;
    let done = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for i in 0..40u64 {
        let (c, done) = (w.client.client().clone(), done.clone());
        calls.push(tokio::spawn(async move {
            let name = format!("caller-{i}");
            // Every other call is slow: the quick ones must not wait behind it.
            let got: String = if i % 2 == 0 {
                c.call("echo", "Echo.Slow", &(400u64, name.clone())).await?
            } else {
                c.call("echo", "Echo.Call", &name).await?
            };
            Ok::<_, Error>((i, got == name, done.fetch_add(1, Ordering::SeqCst)))
        }));
    }
    let mut order = HashMap::new();
    for c in calls {
        let (i, matched, finished_as) = c.await??;
        assert!(matched, "call {i} got another caller's reply");
        order.insert(i, finished_as);
    }
    // All 20 quick calls finished before any slow one: replies came out of order.
    assert!((0..40).filter(|i| i % 2 == 1).all(|i| order[&i] < 20), "{order:?}");
    assert_eq!(w.dials.load(Ordering::SeqCst), 1, "one connection carried every call");
    w.server.stop().await?;
    Ok(())
}

// Two workers: `Work.Spin` in "block" mode holds one (a handler the server
// cannot time out while it blocks, released only once its caller has given
// up, so its reply is late whatever the machine's load; it sleeps rather
// than spins, so it takes no core from the tests running beside it), the
// caller's deadline fires on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_or_sends_too_much_disturbs_no_one() -> TestResult {
    let w = world("mux-isolation", true, Flags::default()).await?;
    let c = w.client.client().clone();
    let late_before = micro::client::late_replies();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            let opts = CallOptions { timeout: Some(Duration::from_millis(100)), ..Default::default() };
            c.call_with::<_, String>("echo", "Work.Spin", &"block", HashMap::new(), opts).await
        })
    };
    let slow_ok = {
        let c = c.clone();
        tokio::spawn(async move { c.call::<_, String>("echo", "Echo.Slow", &(300u64, "patient".to_string())).await })
    };
    // Over the 64 KiB limit: refused before it is queued, and not retried.
    let big = c.call::<_, String>("echo", "Echo.Call", &"x".repeat(100 * 1024)).await.err();
    assert_eq!(big.as_ref().map(|e| e.code), Some(400), "{big:?}");
    assert!(big.is_some_and(|e| e.detail.contains("over the limit")));
    let e = slow.await?.err();
    assert_eq!(e.map(|e| e.code), Some(408));
    // The caller gave up: now the handler answers, late.
    w.spin.released.store(true, Ordering::SeqCst);
    assert_eq!(slow_ok.await??, "patient");
    // The timed-out call's late reply arrives and is dropped; calls go on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while micro::client::late_replies() == late_before {
        assert!(tokio::time::Instant::now() < deadline, "the late reply never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..5 {
        let got: String = c.call("echo", "Echo.Call", &format!("after-{i}")).await?;
        assert_eq!(got, format!("after-{i}"));
    }
    assert_eq!(w.dials.load(Ordering::SeqCst), 1);
    w.server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn stopping_answers_the_calls_in_flight_on_a_connection() -> TestResult {
    let w = world("mux-drain", true, Flags::default()).await?;
    let mut calls = Vec::new();
    for i in 0..5u64 {
        let c = w.client.client().clone();
        calls.push(tokio::spawn(
            async move { c.call::<_, String>("echo", "Echo.Slow", &(300u64, format!("{i}"))).await },
        ));
    }
    w.slow_started(5).await?;
    w.server.stop().await?;
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await??, format!("{i}"));
    }
    assert_eq!(w.dials.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_connection_the_server_closed_as_idle_is_replaced() -> TestResult {
    let extra = Flags { server_idle_timeout: Some(Duration::from_millis(200)), ..Flags::default() };
    let w = world("mux-idle", true, extra).await?;
    let c = w.client.client().clone();
    assert_eq!(c.call::<_, String>("echo", "Echo.Call", &"one").await?, "one");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.call::<_, String>("echo", "Echo.Call", &"two").await?, "two");
    assert_eq!(w.dials.load(Ordering::SeqCst), 2);
    w.server.stop().await?;
    Ok(())
}

/// `--client-pool-ttl`: a connection unused for longer is replaced rather
/// than trusted.
#[tokio::test]
async fn a_connection_idle_past_the_pool_ttl_is_replaced() -> TestResult {
    let ttl = Duration::from_millis(200);
    let w = world("mux-pool-ttl", true, Flags { client_pool_ttl: Some(ttl), ..Flags::default() }).await?;
    let c = w.client.client().clone();
    assert_eq!(c.call::<_, String>("echo", "Echo.Call", &"one").await?, "one");
    assert_eq!(c.call::<_, String>("echo", "Echo.Call", &"two").await?, "two");
    assert_eq!(w.dials.load(Ordering::SeqCst), 1, "within the TTL the connection is reused");
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(c.call::<_, String>("echo", "Echo.Call", &"three").await?, "three");
    assert_eq!(w.dials.load(Ordering::SeqCst), 2, "past the TTL a new connection is dialled");
    w.server.stop().await?;
    Ok(())
}

/// A transport whose sockets cannot be split cannot carry a stream: the
/// client says so with a 501 instead of trying.
#[tokio::test]
async fn a_stream_over_a_transport_that_cannot_split_is_a_501() -> TestResult {
    let w = world("mux-no-split-stream", false, Flags::default()).await?;
    let e = w.client.client().stream::<String, String>("echo", "Echo.Stream").await.err();
    assert_eq!(e.as_ref().map(|e| e.code), Some(501), "{e:?}");
    assert!(e.is_some_and(|e| e.detail.contains("cannot carry streams")));
    w.server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn sockets_that_cannot_split_carry_one_call_at_a_time() -> TestResult {
    let w = world("mux-plain", false, Flags::default()).await?;
    let mut calls = Vec::new();
    for i in 0..8 {
        let c = w.client.client().clone();
        calls.push(tokio::spawn(
            async move { c.call::<_, String>("echo", "Echo.Slow", &(200u64, format!("{i}"))).await },
        ));
    }
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await??, format!("{i}"));
    }
    // One connection per concurrent call, then pooled and reused.
    assert_eq!(w.dials.load(Ordering::SeqCst), 8);
    assert_eq!(w.client.client().call::<_, String>("echo", "Echo.Call", &"again").await?, "again");
    assert_eq!(w.dials.load(Ordering::SeqCst), 8);
    w.server.stop().await?;
    Ok(())
}

/// A go-micro style peer on a raw socket: requests written back to back
/// before any reply is read are all answered, each with its id.
#[tokio::test]
async fn pipelined_requests_from_a_raw_peer_are_answered_by_id() -> TestResult {
    let w = world("mux-raw", true, Flags::default()).await?;
    let addr = w.server.server().service().nodes[0].address.clone();
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    let mut out = BytesMut::new();
    for (id, ms) in [("a", 300u64), ("b", 0), ("c", 100)] {
        let body = serde_json::to_vec(&(ms, format!("body-{id}")))?;
        let hs = [
            (headers::ID, id),
            (headers::SERVICE, "echo"),
            (headers::ENDPOINT, "Echo.Slow"),
            (headers::CONTENT_TYPE, "application/json"),
        ];
        frame::encode_parts_prefixed(hs, &body, &mut out)?;
    }
    s.write_all(&out).await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        let len = s.read_u32().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        let msg = frame::decode(bytes::Bytes::from(buf))?;
        let body: String = serde_json::from_slice(msg.body.chunk())?;
        got.push((msg.get(headers::ID).unwrap_or_default().to_string(), body));
    }
    // In the order they finished, each with its own id and body.
    let want = [("b", "body-b"), ("c", "body-c"), ("a", "body-a")].map(|(i, b)| (i.to_string(), b.to_string()));
    assert_eq!(got, want);
    w.server.stop().await?;
    Ok(())
}

/// The server enforces a stream's timeout itself: a raw peer that opens a
/// stream with `Timeout: 300` and then says nothing (and never closes) gets
/// the server's end of stream with a 408 once it passes.
#[tokio::test]
async fn the_server_ends_a_stream_at_the_callers_timeout() -> TestResult {
    let w = world("mux-stream-timeout", true, Flags::default()).await?;
    let addr = w.server.server().service().nodes[0].address.clone();
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    let mut out = BytesMut::new();
    let hs = [
        (headers::ID, "s1"),
        (headers::SERVICE, "echo"),
        (headers::ENDPOINT, "Echo.Stream"),
        (headers::CONTENT_TYPE, "application/json"),
        (headers::STREAM, "open"),
        (headers::TIMEOUT, "300"),
    ];
    frame::encode_parts_prefixed(hs, &[], &mut out)?;
    s.write_all(&out).await?;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let len = s.read_u32().await? as usize;
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).await?;
            let msg = frame::decode(bytes::Bytes::from(buf))?;
            if msg.get(headers::STREAM) == Some("eos") {
                return Ok::<_, Box<dyn std::error::Error>>(msg);
            }
        }
    })
    .await??;
    let e = micro::core::Error::parse(end.get(headers::ERROR).ok_or("the end of stream carries no error")?);
    assert_eq!(e.code, 408, "{e}");
    assert!(e.detail.contains("exceeded the caller's timeout"), "{e}");
    w.server.stop().await?;
    Ok(())
}

/// A stopping server ends its open streams with a 503; a stream message
/// over the size limit fails that stream with an error saying so.
#[tokio::test]
async fn streams_end_with_503_on_stop_and_refuse_oversized_messages() -> TestResult {
    let w = world("mux-stream-limits", true, Flags::default()).await?;
    let c = w.client.client().clone();
    // Over the 64 KiB limit of this world's transport.
    let mut s = c.stream::<String, String>("echo", "Echo.Stream").await?;
    s.send(&"small".to_string()).await?;
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), s.recv()).await??, Some("small".to_string()));
    let big = s.send(&"x".repeat(100 * 1024)).await;
    let e = match big {
        Err(e) => e,
        Ok(()) => tokio::time::timeout(Duration::from_secs(5), s.recv())
            .await?
            .err()
            .ok_or("the oversized message went through")?,
    };
    assert!(e.detail.contains("over the limit"), "{e}");
    // Stop with a stream open: it ends with the server's 503.
    let mut s = c.stream::<String, String>("echo", "Echo.Stream").await?;
    s.send(&"hi".to_string()).await?;
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), s.recv()).await??, Some("hi".to_string()));
    let server = w.server.server().clone();
    let stopping = tokio::spawn(async move { server.stop().await });
    let e =
        tokio::time::timeout(Duration::from_secs(10), s.recv()).await?.err().ok_or("the stream outlived the stop")?;
    assert_eq!((e.code, e.id.as_str()), (503, "go.micro.server"), "{e}");
    stopping.await??;
    Ok(())
}

#[tokio::test]
async fn an_oversized_reply_fails_only_its_own_call() -> TestResult {
    let w = world("mux-big-reply", true, Flags::default()).await?;
    let mut calls = Vec::new();
    for i in 0..10usize {
        let c = w.client.client().clone();
        calls.push(tokio::spawn(async move {
            if i == 5 {
                // Over the 64 KiB limit once encoded.
                c.call::<_, String>("echo", "Echo.Big", &(100 * 1024usize)).await.map(|s| s.len())
            } else {
                c.call::<_, String>("echo", "Echo.Slow", &(100u64, format!("{i}"))).await.map(|s| s.len())
            }
        }));
    }
    for (i, c) in calls.into_iter().enumerate() {
        match c.await? {
            Ok(len) => assert!(i != 5 && len == 1, "call {i}: {len}"),
            Err(e) => {
                assert_eq!(i, 5, "call {i} failed: {e}");
                assert_eq!(e.code, 500);
                assert!(e.detail.contains("over the limit"), "{e}");
            }
        }
    }
    assert_eq!(w.dials.load(Ordering::SeqCst), 1, "the connection survived");
    w.server.stop().await?;
    Ok(())
}

/// A request whose error reply would echo enough to pass the message limit
/// (a 40 KiB endpoint name, echoed as a header and in the error's detail,
/// under a 64 KiB limit), pipelined on one connection beside a slow call:
/// the error reply is bounded, and the slow call's reply still arrives on
/// the same connection.
#[tokio::test]
async fn an_error_reply_never_breaks_the_calls_beside_it() -> TestResult {
    let w = world("mux-big-error", true, Flags::default()).await?;
    let addr = w.server.server().service().nodes[0].address.clone();
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    let long = format!("Echo.{}", "x".repeat(40 * 1024));
    let mut out = BytesMut::new();
    let slow = serde_json::to_vec(&(200u64, "slow".to_string()))?;
    for (id, endpoint, body) in [("a", "Echo.Slow", slow.as_slice()), ("b", long.as_str(), b"\"x\"".as_slice())] {
        let hs = [
            (headers::ID, id),
            (headers::SERVICE, "echo"),
            (headers::ENDPOINT, endpoint),
            (headers::CONTENT_TYPE, "application/json"),
        ];
        frame::encode_parts_prefixed(hs, body, &mut out)?;
    }
    s.write_all(&out).await?;
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let len = tokio::time::timeout(Duration::from_secs(10), s.read_u32()).await?? as usize;
        assert!(len <= 64 * 1024, "a reply over the limit: {len} bytes");
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        let msg = frame::decode(bytes::Bytes::from(buf))?;
        got.insert(msg.get(headers::ID).unwrap_or_default().to_string(), msg);
    }
    let b = got.get("b").ok_or("no reply to the oversized error")?;
    let e = micro::core::Error::parse(b.get(headers::ERROR).unwrap_or_default());
    assert_eq!(e.code, 404, "{e}");
    assert!(e.detail.ends_with("(truncated)"), "{}", e.detail.len());
    assert!(b.get(headers::ENDPOINT).is_none(), "the 40 KiB endpoint is not echoed");
    let a = got.get("a").ok_or("the slow call's reply was lost")?;
    assert_eq!(serde_json::from_slice::<String>(a.body.chunk())?, "slow");
    w.server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_stopping_server_answers_new_calls_503_at_once() -> TestResult {
    let w = world("mux-stopping", true, Flags::default()).await?;
    let addr = w.server.server().service().nodes[0].address.clone();
    let c = w.client.client().clone();
    let slow =
        tokio::spawn(async move { c.call::<_, String>("echo", "Echo.Slow", &(3_000u64, "slow".to_string())).await });
    w.slow_started(1).await?;
    let server = w.server.server().clone();
    let stopping = tokio::spawn(async move { server.stop().await });
    // On the connection that still drains the slow call: refused at once,
    // not queued. Until the stop has begun a call is still answered; ask
    // until the answer is the refusal (bounded).
    let opts = CallOptions { address: Some(addr), retries: Some(0), ..Default::default() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let e = loop {
        match w.client.client().call_with::<_, String>("echo", "Echo.Call", &"new", HashMap::new(), opts.clone()).await
        {
            Ok(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(2)).await,
            r => break r.err(),
        }
    };
    assert_eq!(e.as_ref().map(|e| (e.code, e.id.as_str())), Some((503, "go.micro.server")), "{e:?}");
    assert!(!slow.is_finished(), "the 503 came only after the drain");
    assert_eq!(slow.await??, "slow");
    stopping.await??;
    Ok(())
}

/// A peer that sends calls and never reads the replies blocks only its own
/// connection: its handlers still finish and free their in-flight slots.
#[tokio::test]
async fn a_peer_that_reads_nothing_holds_no_in_flight_slots() -> TestResult {
    let idle = Duration::from_millis(500);
    let extra = Flags { server_max_in_flight: Some(8), server_idle_timeout: Some(idle), ..Flags::default() };
    let w = world("mux-no-reader", true, extra).await?;
    let addr = w.server.server().service().nodes[0].address.clone();
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    let mut out = BytesMut::new();
    fn request(id: &str, endpoint: &str, body: &[u8], out: &mut BytesMut) -> Result<(), frame::FrameError> {
        let hs = [
            (headers::ID, id),
            (headers::SERVICE, "echo"),
            (headers::ENDPOINT, endpoint),
            (headers::CONTENT_TYPE, "application/json"),
        ];
        frame::encode_parts_prefixed(hs, body, out)
    }
    // 32 MiB of replies, more than loopback buffers hold, then 8 slow calls.
    for i in 0..512 {
        request(&format!("big-{i}"), "Echo.Big", b"65000", &mut out)?;
    }
    for i in 0..8 {
        request(&format!("slow-{i}"), "Echo.Slow", b"[300,\"x\"]", &mut out)?;
    }
    s.write_all(&out).await?;
    // The slow calls finish while their replies cannot be written, and free
    // their slots: a good client is soon served instead of told the server
    // is busy (which it would be for ever if they held them).
    let opts = CallOptions { address: Some(addr), retries: Some(0), ..Default::default() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = w.client.client();
        match c.call_with::<_, String>("echo", "Echo.Call", &"fine", HashMap::new(), opts.clone()).await {
            Ok(got) => {
                assert_eq!(got, "fine");
                break;
            }
            Err(e) if e.code == 503 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A write that makes no progress for the idle timeout closes the
    // connection: well past it (4×), reading now finds the end of the
    // stream (or a reset) long before the 32 MiB of replies.
    tokio::time::sleep(idle * 4).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open after {got} bytes");
    assert!(got < 512 * 65_000, "every reply was written ({got} bytes): the stalled write did not close it");
    w.server.stop().await?;
    Ok(())
}

/// The calls of one connection, beside a handler that computes without
/// ever awaiting: once its endpoint has shown that it computes (one brief
/// call), it runs on a task of its own, and quick calls on the same
/// connection are answered while it still spins. Asserted by order, not by
/// time: each quick call returns while the spinning handler is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_never_yields_holds_up_no_call_beside_it() -> TestResult {
    let w = world("mux-hol", true, Flags::default()).await?;
    let c = w.client.client().clone();
    // Learned: the first call of an endpoint that computes runs in place.
    assert_eq!(c.call::<_, String>("echo", "Work.Spin", &"brief").await?, "spun");
    let hold = {
        let c = c.clone();
        tokio::spawn(async move { c.call::<_, String>("echo", "Work.Spin", &"hold").await })
    };
    let spin = w.spin.clone();
    assert!(tokio::task::spawn_blocking(move || spin.wait_started(2)).await?, "the holding spin never started");
    let opts = CallOptions { timeout: Some(Duration::from_secs(5)), ..Default::default() };
    for i in 0..20 {
        let got: String = c.call_with("echo", "Echo.Call", &format!("ping-{i}"), HashMap::new(), opts.clone()).await?;
        assert_eq!(got, format!("ping-{i}"));
        assert_eq!(w.spin.spinning.load(Ordering::SeqCst), 1, "ping {i} was answered only after the spin ended");
    }
    w.spin.released.store(true, Ordering::SeqCst);
    assert_eq!(hold.await??, "released", "the spin ran to its limit: the pings waited for it");
    assert_eq!(w.dials.load(Ordering::SeqCst), 1, "every call shared one connection");
    w.server.stop().await?;
    Ok(())
}

/// One client connection's calls to an endpoint that computes run on every
/// worker of the server at once, not one after another on the
/// connection's task: two spins that only end when released are both
/// running together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connections_heavy_calls_run_on_every_worker() -> TestResult {
    let w = world("mux-cores", true, Flags::default()).await?;
    let c = w.client.client().clone();
    assert_eq!(c.call::<_, String>("echo", "Work.Spin", &"brief").await?, "spun");
    let holds: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.call::<_, String>("echo", "Work.Spin", &"hold").await })
        })
        .collect();
    let spin = w.spin.clone();
    // Both workers spin now: this thread, not a worker, waits for the second start.
    let both = tokio::task::spawn_blocking(move || {
        let both = spin.wait_started(3);
        spin.released.store(true, Ordering::SeqCst);
        both
    })
    .await?;
    assert!(both, "the second spin started only after the first ended");
    for h in holds {
        assert_eq!(h.await??, "released");
    }
    assert_eq!(w.dials.load(Ordering::SeqCst), 1);
    w.server.stop().await?;
    Ok(())
}
