//! Hostile and broken peers cost only their own connection: garbage, a
//! truncated header, a frame cut short, a 100 MiB length prefix, a slow
//! loris and a never-finished frame are each cut off within bounded time,
//! memory stays bounded, and well-behaved calls made at the same time all
//! succeed. All traffic is on loopback and every loop is bounded.

use micro::core::{CallOptions, Error};
use micro::{Flags, Service};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn flags(world: &str) -> Flags {
    Flags {
        transport_read_timeout: Some(Duration::from_millis(300)),
        server_idle_timeout: Some(Duration::from_secs(2)),
        max_message_size: Some(1024 * 1024),
        ..Flags::memory(world)
    }
}

async fn server(world: &str, extra: Flags) -> Result<(Service, String), Box<dyn std::error::Error>> {
    let f = Flags {
        server_max_in_flight: extra.server_max_in_flight,
        server_max_connections: extra.server_max_connections,
        server_max_in_flight_per_connection: extra.server_max_in_flight_per_connection,
        server_first_message_timeout: extra.server_first_message_timeout,
        server_idle_timeout: extra.server_idle_timeout.or(Some(Duration::from_secs(2))),
        ..flags(world)
    };
    let svc = Service::builder("target").flags(f).build()?;
    svc.handle("Echo.Call", |s: String| async move { Ok::<_, Error>(s) })?;
    svc.handle("Echo.Slow", |ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms.min(5000))).await;
        Ok::<_, Error>(ms)
    })?;
    svc.start().await?;
    let addr = svc.server().service().nodes[0].address.clone();
    Ok((svc, addr))
}

/// Waits until the server closes `s` (EOF or reset), at most `limit`.
async fn closed_within(mut s: TcpStream, limit: Duration) -> Result<Duration, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Err(_) => return Err(format!("connection still open after {limit:?}").into()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(t0.elapsed()),
            Ok(Ok(_)) => continue, // e.g. an error reply before the close
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs one hostile peer (`hostile`, given the server's address) against a
/// fresh server while 8 well-behaved callers call it, then checks that every
/// good call succeeded, and returns how many completed while the hostile
/// peer was at work (from its first byte until the server had cut it off).
async fn beside_good_calls<F, Fut>(world: &str, hostile: F) -> Result<usize, Box<dyn std::error::Error>>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = TestResult>,
{
    let (svc, addr) = server(world, Flags::default()).await?;
    let caller = Service::builder("caller").flags(flags(world)).build()?;
    let calls = Arc::new(AtomicUsize::new(0));
    let hostile_done = Arc::new(AtomicBool::new(false));
    let mut good = Vec::new();
    for c in 0..8 {
        let client = caller.client().clone();
        let (calls, done) = (calls.clone(), hostile_done.clone());
        good.push(tokio::spawn(async move {
            let mut i = 0;
            while !done.load(Ordering::SeqCst) {
                let s = format!("{c}-{i}");
                let r: String = client.call("target", "Echo.Call", &s).await?;
                assert_eq!(r, s);
                calls.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            Ok::<_, Error>(())
        }));
    }
    // The hostile peer starts once the good traffic runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) < 8 {
        assert!(Instant::now() < deadline, "the good calls never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let before = calls.load(Ordering::SeqCst);
    hostile(addr).await?;
    let during = calls.load(Ordering::SeqCst) - before;
    // And the server still serves after it: 8 more good calls (bounded).
    let after = calls.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) < after + 8 {
        assert!(Instant::now() < deadline, "no good calls after the hostile peer");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    hostile_done.store(true, Ordering::SeqCst);
    for g in good {
        g.await??;
    }
    svc.stop().await?;
    Ok(during)
}

/// How long any hostile peer may take to be cut off.
const BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_cut_off() -> TestResult {
    beside_good_calls("faults-garbage", |addr| async move {
        // "GARB" read as a length prefix is over the limit.
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(b"GARBAGE GARBAGE GARBAGE\r\n").await?;
        closed_within(s, BOUND).await?;
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_truncated_inside_a_frame_is_cut_off() -> TestResult {
    beside_good_calls("faults-truncated-header", |addr| async move {
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(&[0, 0, 0, 10, 0, 5, 0, 3, b'a', b'b', b'c', 0, 0, 0]).await?;
        closed_within(s, BOUND).await?;
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_cut_short_by_the_peer_is_cut_off() -> TestResult {
    beside_good_calls("faults-cut-short", |addr| async move {
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(&100u32.to_be_bytes()).await?;
        s.write_all(&[7u8; 50]).await?;
        s.shutdown().await?;
        closed_within(s, BOUND).await?;
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_length_prefix_is_refused_before_anything_is_allocated() -> TestResult {
    beside_good_calls("faults-100mib", |addr| async move {
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(&(100u32 * 1024 * 1024).to_be_bytes()).await?;
        let took = closed_within(s, BOUND).await?;
        assert!(took < Duration::from_secs(1), "refused at once, took {took:?}");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_is_cut_off_by_the_read_timeout() -> TestResult {
    let during = beside_good_calls("faults-loris", |addr| async move {
        // A byte every 100 ms is cut off by the 300 ms read timeout.
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(&1000u32.to_be_bytes()).await?;
        for _ in 0..50 {
            if s.write_all(&[1]).await.is_err() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the slow loris was not cut off within 5 s".into())
    })
    .await?;
    // It was connected for at least the read timeout: good calls ran meanwhile.
    assert!(during >= 10, "only {during} good calls ran beside the slow loris");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_length_prefix_is_cut_off_by_the_read_timeout_not_the_idle_timeout() -> TestResult {
    let during = beside_good_calls("faults-half-prefix", |addr| async move {
        // The read timeout (300 ms) starts at a frame's first byte, and
        // closes it long before the idle timeout (2 s).
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(&[0, 0]).await?;
        let took = closed_within(s, BOUND).await?;
        assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(1500), "read timeout: {took:?}");
        Ok(())
    })
    .await?;
    assert!(during >= 10, "only {during} good calls ran beside the half prefix");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_announcing_large_frames_cost_little_memory() -> TestResult {
    let during = beside_good_calls("faults-memory", |addr| async move {
        // Sampled from the moment the 64 peers have written until the
        // server has cut every one of them off at the read timeout (so it
        // has read what they sent).
        let before = rss_kib();
        let mut held = Vec::new();
        for _ in 0..64 {
            let mut s = TcpStream::connect(&addr).await?;
            s.write_all(&(1024u32 * 1024 - 1).to_be_bytes()).await?;
            s.write_all(&[0u8; 16]).await?;
            held.push(s);
        }
        let all_cut = tokio::spawn(async move {
            for s in held {
                closed_within(s, Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        });
        let mut peak = before;
        while !all_cut.is_finished() {
            peak = peak.max(rss_kib());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        all_cut.await??;
        let grew = peak.saturating_sub(before);
        assert!(grew < 16 * 1024, "64 announced 1 MiB frames grew RSS by {grew} KiB");
        Ok(())
    })
    .await?;
    assert!(during >= 10, "only {during} good calls ran beside the 64 peers");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_in_flight_requests_and_connections() -> TestResult {
    let limits = Flags { server_max_in_flight: Some(2), server_max_connections: Some(4), ..Flags::default() };
    let (svc, addr) = server("faults-limits", limits).await?;
    let caller = Service::builder("caller").flags(flags("faults-limits")).build()?;

    // Four slow calls at once against an in-flight limit of 2: the excess is refused with 503 at once.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let client = caller.client().clone();
        let opts = CallOptions { retries: Some(0), address: Some(addr.clone()), ..Default::default() };
        calls.push(tokio::spawn(async move {
            client.call_with::<_, u64>("target", "Echo.Slow", &500u64, HashMap::new(), opts).await
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for c in calls {
        match c.await? {
            Ok(500) => ok += 1,
            Err(e) if e.code == 503 => busy += 1,
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(ok + busy, 4);
    assert!(ok >= 2 && busy >= 1, "ok {ok}, busy {busy}");

    // Over the connection limit, new connections are closed on accept.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(&addr).await?);
    }
    let mut closed = 0;
    for s in held {
        if closed_within(s, Duration::from_millis(500)).await.is_ok() {
            closed += 1;
        }
    }
    assert!(closed >= 4, "{closed} of 8 closed at a limit of 4 (some pooled client connections count too)");
    svc.stop().await?;
    Ok(())
}

/// Sockets that connect and say nothing, or send one byte of a length
/// prefix, take every connection slot; the server lets each go within the
/// first-message timeout (or the read timeout, from the frame's first byte)
/// while its idle timeout is minutes, and a good call gets through after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_one_byte_sockets_cannot_lock_the_server_out() -> TestResult {
    let extra = Flags {
        server_max_connections: Some(13),
        server_first_message_timeout: Some(Duration::from_millis(500)),
        server_idle_timeout: Some(Duration::from_secs(300)),
        ..Flags::default()
    };
    let (svc, addr) = server("faults-silent", extra).await?;
    // A connection that spoke once, then sends one byte of its next prefix.
    let mut spoke = TcpStream::connect(&addr).await?;
    let mut out = bytes::BytesMut::new();
    let hs = [
        ("Micro-Id", "1"),
        ("Micro-Service", "target"),
        ("Micro-Endpoint", "Echo.Call"),
        ("Content-Type", "application/json"),
    ];
    micro::core::frame::encode_parts_prefixed(hs, b"\"hi\"", &mut out)?;
    spoke.write_all(&out).await?;
    let len = spoke.read_u32().await? as usize;
    let mut reply = vec![0u8; len];
    spoke.read_exact(&mut reply).await?;
    spoke.write_all(&[0]).await?;
    // And every other slot: sockets that say nothing, or one byte.
    let mut socks = Vec::new();
    for _ in 0..8 {
        socks.push(TcpStream::connect(&addr).await?);
    }
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(&[0]).await?; // one byte of a length prefix, then nothing
        socks.push(s);
    }
    // Locked out now: one more connection is closed on accept.
    let extra = TcpStream::connect(&addr).await?;
    let took = closed_within(extra, Duration::from_secs(2)).await?;
    assert!(took < Duration::from_millis(400), "every slot was taken: {took:?}");
    let t0 = Instant::now();
    let mut closes = Vec::new();
    socks.push(spoke);
    for s in socks {
        closes.push(tokio::spawn(
            async move { closed_within(s, Duration::from_secs(10)).await.map_err(|e| e.to_string()) },
        ));
    }
    for c in closes {
        let took = c.await??;
        assert!(took < Duration::from_secs(10), "held for {took:?}");
    }
    eprintln!("all 13 hostile sockets closed within {:?} (idle timeout 5 min)", t0.elapsed());
    let caller = Service::builder("caller").flags(flags("faults-silent")).build()?;
    let r: String = caller.client().call("target", "Echo.Call", &"after".to_string()).await?;
    assert_eq!(r, "after");
    svc.stop().await?;
    Ok(())
}

/// One connection pipelining more slow calls than its share: the excess is
/// answered 503 on that connection at once, and another connection's call is
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_take_every_in_flight_slot() -> TestResult {
    let extra =
        Flags { server_max_in_flight: Some(16), server_max_in_flight_per_connection: Some(4), ..Flags::default() };
    let (svc, addr) = server("faults-per-conn", extra).await?;
    let mut hog = TcpStream::connect(&addr).await?;
    let mut out = bytes::BytesMut::new();
    for i in 0..20 {
        let id = i.to_string();
        let hs = [
            ("Micro-Id", id.as_str()),
            ("Micro-Service", "target"),
            ("Micro-Endpoint", "Echo.Slow"),
            ("Content-Type", "application/json"),
        ];
        micro::core::frame::encode_parts_prefixed(hs, b"1000", &mut out)?;
    }
    hog.write_all(&out).await?;
    // The other connection's call while the hog's four run.
    let caller = Service::builder("caller").flags(flags("faults-per-conn")).build()?;
    let t0 = Instant::now();
    let r: u64 = caller.client().call("target", "Echo.Slow", &1u64).await?;
    assert_eq!(r, 1);
    assert!(t0.elapsed() < Duration::from_millis(900), "served beside the hog, not after it: {:?}", t0.elapsed());
    let (mut busy, mut served) = (0, 0);
    for _ in 0..20 {
        let len = tokio::time::timeout(Duration::from_secs(10), hog.read_u32()).await?? as usize;
        let mut buf = vec![0u8; len];
        hog.read_exact(&mut buf).await?;
        let m = micro::core::frame::decode(bytes::Bytes::from(buf))?;
        match m.get("Micro-Error") {
            Some(e) => {
                let e = Error::parse(e);
                assert_eq!(e.code, 503, "{e}");
                assert!(e.detail.contains("connection busy"), "{e}");
                busy += 1;
            }
            None => served += 1,
        }
    }
    assert_eq!((served, busy), (4, 16));
    svc.stop().await?;
    Ok(())
}

/// Sockets that never send the HTTP/2 preface, or send it and never a
/// request, take every connection slot of a gRPC server; each is closed
/// within the first-message timeout, and a call succeeds after.
/// The gRPC server's in-flight limit: four slow (2 s) calls at once
/// against a limit of 2 — the excess is refused at once with the server's 503.
#[cfg(feature = "grpc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_server_refuses_calls_over_its_in_flight_limit() -> TestResult {
    let f = Flags {
        server: Some("grpc".into()),
        client: Some("grpc".into()),
        server_max_in_flight: Some(2),
        ..flags("faults-grpc-in-flight")
    };
    let svc = Service::builder("target").flags(f.clone()).build()?;
    svc.handle("Echo.Slow", |ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms.min(5000))).await;
        Ok::<_, Error>(ms)
    })?;
    svc.start().await?;
    let addr = svc.server().service().nodes[0].address.clone();
    let caller = Service::builder("caller").flags(f).build()?;
    let mut calls = Vec::new();
    for _ in 0..4 {
        let client = caller.client().clone();
        let opts = CallOptions { retries: Some(0), address: Some(addr.clone()), ..Default::default() };
        calls.push(tokio::spawn(async move {
            let t0 = Instant::now();
            (client.call_with::<_, u64>("target", "Echo.Slow", &2_000u64, HashMap::new(), opts).await, t0.elapsed())
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for c in calls {
        match c.await? {
            (Ok(2_000), _) => ok += 1,
            (Err(e), took) if e.code == 503 => {
                assert_eq!(e.id, "go.micro.server", "{e}");
                assert!(e.detail.contains("server busy"), "{e}");
                assert!(took < Duration::from_millis(1_500), "refused at once, not after waiting: {took:?}");
                busy += 1;
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!((ok, busy), (2, 2), "the limit of 2 held");
    svc.stop().await?;
    Ok(())
}

#[cfg(feature = "grpc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_lock_a_grpc_server_out() -> TestResult {
    let f = Flags {
        server: Some("grpc".into()),
        client: Some("grpc".into()),
        server_max_connections: Some(4),
        server_first_message_timeout: Some(Duration::from_millis(500)),
        server_idle_timeout: Some(Duration::from_secs(300)),
        ..flags("faults-grpc-silent")
    };
    let svc = Service::builder("target").flags(f.clone()).build()?;
    svc.handle("Echo.Call", |s: String| async move { Ok::<_, Error>(s) })?;
    svc.start().await?;
    let addr = svc.server().service().nodes[0].address.clone();
    let mut socks = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(&addr).await?;
        if i % 2 == 1 {
            // The client preface and an empty SETTINGS frame, then nothing.
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
            s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
        }
        socks.push(s);
    }
    let extra = TcpStream::connect(&addr).await?;
    let took = closed_within(extra, Duration::from_secs(2)).await?;
    assert!(took < Duration::from_millis(400), "every slot was taken: {took:?}");
    for s in socks {
        let took = closed_within(s, Duration::from_secs(10)).await?;
        assert!(took < Duration::from_secs(5), "a silent socket held its slot for {took:?}");
    }
    let caller = Service::builder("caller").flags(f).build()?;
    let r: String = caller.client().call("target", "Echo.Call", &"after".to_string()).await?;
    assert_eq!(r, "after");
    svc.stop().await?;
    Ok(())
}

/// A stream holds an in-flight slot: one with no message either way for the
/// idle timeout is cancelled (the caller gets a 408), while a stream whose
/// messages keep coming outlives the timeout many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_cancelled_after_the_idle_timeout() -> TestResult {
    let world = "faults-stream-idle";
    let f = Flags { server_idle_timeout: Some(Duration::from_millis(500)), ..flags(world) };
    let svc = Service::builder("target").flags(f).build()?;
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<()>();
    svc.handle_stream("Echo.Stream", move |_ctx, mut s: micro::TypedStream<u64, u64>| {
        let guard = Ended(ended_tx.clone());
        async move {
            let _guard = guard;
            while let Some(n) = s.recv().await? {
                s.send(&n).await?;
            }
            Ok(())
        }
    })?;
    svc.start().await?;
    let caller = Service::builder("caller").flags(flags(world)).build()?;
    let mut s: micro::TypedStream<u64, u64> = caller.client().stream("target", "Echo.Stream").await?;
    // Lively: a message every 200 ms for 1.2 s, more than twice the idle timeout.
    for n in 0..6u64 {
        s.send(&n).await?;
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), s.recv()).await??, Some(n));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then silent: cancelled by the server, the caller told why.
    let t0 = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(10), s.recv()).await?.err().ok_or("the stream went on")?;
    assert_eq!(e.code, 408, "{e}");
    assert!(e.detail.contains("no message either way"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    tokio::time::timeout(Duration::from_secs(5), ended.recv()).await?.ok_or("the handler was never dropped")?;
    svc.stop().await?;
    Ok(())
}

/// Signals when dropped: a handler ended or was dropped by its server.
struct Ended(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A gRPC request whose body never comes (a stream opened to a unary
/// endpoint that sends nothing and never ends) is answered with an error at
/// the body deadline instead of holding the stream for ever.
#[cfg(feature = "grpc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_request_body_that_never_comes_is_cut_off() -> TestResult {
    let f = Flags {
        server: Some("grpc".into()),
        client: Some("grpc".into()),
        server_first_message_timeout: Some(Duration::from_millis(500)),
        ..flags("faults-grpc-body")
    };
    let svc = Service::builder("target").flags(f.clone()).build()?;
    svc.handle("Echo.Call", |s: String| async move { Ok::<_, Error>(s) })?;
    svc.start().await?;
    let caller = Service::builder("caller").flags(f).build()?;
    let mut s: micro::TypedStream<String, String> = caller.client().stream("target", "Echo.Call").await?;
    let t0 = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(10), s.recv()).await?.err().ok_or("answered without a body")?;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    eprintln!("the error: {e}");
    assert!(e.detail.contains("did not arrive within"), "{e}");
    // The server goes on serving.
    let r: String = caller.client().call("target", "Echo.Call", &"after".to_string()).await?;
    assert_eq!(r, "after");
    svc.stop().await?;
    Ok(())
}
