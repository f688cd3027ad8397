//! Distributed components against real servers: etcd and nats-server
//! started by the harness on free loopback ports, service and client
//! processes discovering each other and exchanging messages through them.

mod common;

use common::*;
use futures::StreamExt;
use micro::core::{Registry, RegistryOptions};
use micro_testkit::{Etcd, Nats};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn etcd_env(etcd: &Etcd) -> Vec<(&'static str, String)> {
    vec![
        ("MICRO_REGISTRY", "etcd".into()),
        ("MICRO_REGISTRY_ADDRESS", etcd.address()),
        ("MICRO_REGISTER_TTL", "2".into()),
        ("MICRO_REGISTER_INTERVAL", "1".into()),
        ("MICRO_LOG_LEVEL", "warn".into()),
    ]
}

fn command(path: impl AsRef<std::ffi::OsStr>, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(path);
    without_micro_env(&mut c);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

async fn wait_nodes(
    reg: &micro_etcd::EtcdRegistry,
    n: usize,
    limit: Duration,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    Ok(micro_testkit::wait::nodes(reg, "greeter", n, limit).await.map_err(|e| e.to_string())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_discovery_ttl_expiry_and_server_restart() -> TestResult {
    let mut etcd = Etcd::start().map_err(|e| e.to_string())?;
    let env = etcd_env(&etcd);
    let reg = micro_etcd::EtcdRegistry::new(RegistryOptions { addresses: vec![etcd.address()], timeout: None });
    // Their logs, for the failure message if they never register.
    let logs = tempfile::tempdir()?;
    let service = |name: &str| -> Result<Proc, Box<dyn std::error::Error>> {
        let log = std::fs::File::create(logs.path().join(name))?;
        Ok(Proc(command(bin("greeter-service"), &env).stdout(Stdio::null()).stderr(log).spawn()?))
    };
    let mut a = service("a")?;
    let _b = service("b")?;
    let mut ids = match wait_nodes(&reg, 2, Duration::from_secs(20)).await {
        Ok(ids) => ids,
        Err(e) => {
            let log = |n: &str| std::fs::read_to_string(logs.path().join(n)).unwrap_or_default();
            return Err(format!("{e}\nservice a's log:\n{}\nservice b's log:\n{}", log("a"), log("b")).into());
        }
    };

    // A client process finds both through etcd.
    let o =
        command(bin("greeter-client"), &env).args(["--whoami", "--count", "8", "--selector", "roundrobin"]).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut seen: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    seen.sort();
    seen.dedup();
    ids.sort();
    assert_eq!(seen, ids);

    // SIGKILL one: its lease expires after the 2 s TTL and the node goes.
    a.0.kill()?;
    a.0.wait()?;
    let t0 = Instant::now();
    wait_nodes(&reg, 1, Duration::from_secs(10)).await?;
    assert!(t0.elapsed() < Duration::from_secs(5), "expired after {:?}", t0.elapsed());

    // etcd restarts with no state: the survivor registers again on its next heart-beat.
    etcd.restart(true).map_err(|e| e.to_string())?;
    let reg = micro_etcd::EtcdRegistry::new(RegistryOptions { addresses: vec![etcd.address()], timeout: None });
    wait_nodes(&reg, 1, Duration::from_secs(20)).await?;
    let o = command(bin("greeter-client"), &env).args(["--name", "again", "--wait", "10s"]).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello again\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_records_are_go_micros() -> TestResult {
    let etcd = Etcd::start().map_err(|e| e.to_string())?;
    let mut raw = etcd_client::Client::connect([etcd.address()], None).await?;
    // A record exactly as go-micro v2's etcd registry writes it.
    let go_micro = r#"{"name":"go.micro.srv.legacy","version":"latest","metadata":null,"endpoints":[{"name":"Legacy.Call","request":{"name":"Request","type":"Request","values":[{"name":"name","type":"string","values":null}]},"response":{"name":"Response","type":"Response","values":null},"metadata":{}}],"nodes":[{"id":"go.micro.srv.legacy-5f2a","address":"10.0.0.7:36021","metadata":{"broker":"http","protocol":"mucp","registry":"etcd","server":"mucp","transport":"http"}}]}"#;
    raw.put("/micro/registry/go.micro.srv.legacy/go.micro.srv.legacy-5f2a", go_micro, None).await?;
    let reg = micro_etcd::EtcdRegistry::new(RegistryOptions { addresses: vec![etcd.address()], timeout: None });
    let got = reg.get_service("go.micro.srv.legacy").await?;
    assert_eq!(got[0].version, "latest");
    assert_eq!(got[0].nodes[0].address, "10.0.0.7:36021");
    assert_eq!(got[0].endpoints[0].name, "Legacy.Call");
    assert_eq!(got[0].endpoints[0].request.as_ref().map(|v| v.values[0].kind.as_str()), Some("string"));
    // `micro services` lists it beside micro's own.
    let o = command(MICRO, &etcd_env(&etcd)).arg("services").output()?;
    assert!(String::from_utf8_lossy(&o.stdout).contains("go.micro.srv.legacy"));

    // micro's record, read raw: the same keys in the same places.
    let _svc =
        Proc(command(bin("greeter-service"), &etcd_env(&etcd)).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    wait_nodes(&reg, 1, Duration::from_secs(20)).await?;
    let resp = raw.get("/micro/registry/greeter/", Some(etcd_client::GetOptions::new().with_prefix())).await?;
    let kv = resp.kvs().first().ok_or("no greeter key")?;
    assert!(kv.key_str()?.starts_with("/micro/registry/greeter/greeter-"));
    let v: serde_json::Value = serde_json::from_slice(kv.value())?;
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        k.sort();
        k
    };
    assert_eq!(keys(&v), ["endpoints", "metadata", "name", "nodes", "version"]);
    assert_eq!(keys(&v["nodes"][0]), ["address", "id", "metadata"]);
    assert_eq!(keys(&v["endpoints"][0]), ["metadata", "name", "request", "response"]);
    assert_eq!(keys(&v["endpoints"][0]["request"]), ["name", "type", "values"]);
    Ok(())
}

/// Lines a child prints, collected by a thread.
fn collect_lines(p: &mut Proc) -> Result<Arc<Mutex<Vec<String>>>, Box<dyn std::error::Error>> {
    let out = p.0.stdout.take().ok_or("no stdout")?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    Ok(lines)
}

fn count(l: &Arc<Mutex<Vec<String>>>) -> usize {
    l.lock().unwrap_or_else(|e| e.into_inner()).len()
}

async fn wait_total(
    ls: &[&Arc<Mutex<Vec<String>>>],
    n: usize,
    limit: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let total = || ls.iter().map(|l| count(l)).sum::<usize>();
    let what = format!("{n} messages received");
    micro_testkit::wait::until(&what, limit, || total() >= n)
        .await
        .map_err(|e| format!("{e} (received {})", total()))?;
    Ok(())
}

fn subscriber(nats: &Nats, topic: &str, queue: Option<&str>) -> Result<Proc, Box<dyn std::error::Error>> {
    let env = [
        ("MICRO_BROKER", "nats".to_string()),
        ("MICRO_BROKER_ADDRESS", nats.address()),
        ("MICRO_REGISTRY", "memory".to_string()),
        ("MICRO_LOG_LEVEL", "warn".to_string()),
    ];
    let mut c = command(MICRO, &env);
    c.args(["subscribe", topic, "--output", "json"]);
    if let Some(q) = queue {
        c.args(["--queue", q]);
    }
    let mut p = Proc(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?);
    // The first stderr line says the subscription is in place.
    let err = p.0.stderr.take().ok_or("no stderr")?;
    let mut line = String::new();
    BufReader::new(err).read_line(&mut line)?;
    assert!(line.contains("subscribed to"), "{line}");
    Ok(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_queue_groups_restart_and_plain_clients() -> TestResult {
    let mut nats = Nats::start().map_err(|e| e.to_string())?;
    let mut a = subscriber(&nats, "jobs", Some("workers"))?;
    let mut b = subscriber(&nats, "jobs", Some("workers"))?;
    let (la, lb) = (collect_lines(&mut a)?, collect_lines(&mut b)?);

    // A plain NATS client publishes (no headers): micro subscribers get the payload as the body.
    let plain = async_nats::ConnectOptions::new().max_reconnects(None).connect(nats.address()).await?;
    for i in 0..40 {
        plain.publish("jobs", format!(r#"{{"job":{i}}}"#).into()).await?;
    }
    plain.flush().await?;
    wait_total(&[&la, &lb], 40, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (na, nb) = (count(&la), count(&lb));
    assert_eq!(na + nb, 40, "each message to one member of the group");
    assert!(na > 0 && nb > 0, "both members share the queue: {na}/{nb}");
    let first: serde_json::Value = serde_json::from_str(&la.lock().unwrap_or_else(|e| e.into_inner())[0])?;
    assert_eq!(first["topic"], "jobs");
    assert!(first["body"]["job"].is_number());

    // micro publishes: a plain client reads the JSON payload and micro's headers.
    let mut inbox = plain.subscribe("events").await?;
    plain.flush().await?;
    let env = [
        ("MICRO_BROKER", "nats".to_string()),
        ("MICRO_BROKER_ADDRESS", nats.address()),
        ("MICRO_REGISTRY", "memory".to_string()),
        ("MICRO_LOG_LEVEL", "warn".to_string()),
    ];
    let o = command(MICRO, &env).args(["publish", "events", r#"{"hello":"nats"}"#]).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = tokio::time::timeout(Duration::from_secs(5), inbox.next()).await?.ok_or("no message")?;
    assert_eq!(&m.payload[..], br#"{"hello":"nats"}"#);
    let h = m.headers.ok_or("no headers")?;
    assert_eq!(h.get("Content-Type").map(|v| v.as_str()), Some("application/json"));
    assert_eq!(h.get("Micro-Topic").map(|v| v.as_str()), Some("events"));

    // nats-server restarts: the subscribers reconnect and keep receiving.
    nats.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.start_again().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let before = count(&la) + count(&lb);
    // Publish until the resubscribed group gets messages again (bounded).
    let mut sent = 0;
    while count(&la) + count(&lb) < before + 5 {
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!("no messages after the restart ({sent} sent)").into());
        }
        let _ = plain.publish("jobs", br#"{"job":"after"}"#.as_slice().into()).await;
        let _ = plain.flush().await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_during_a_publish_stream_loses_only_what_was_in_flight() -> TestResult {
    use micro::core::{Broker, BrokerHandler, BrokerOptions, Handled, Message, SubscribeOptions};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut nats = Nats::start().map_err(|e| e.to_string())?;
    let opts = || BrokerOptions { addresses: vec![nats.address()], registry: None, ..Default::default() };
    let sub = micro_nats::NatsBroker::new(opts());
    let publisher = micro_nats::NatsBroker::new(opts());
    let got = Arc::new(Mutex::new(Vec::<u32>::new()));
    let g = got.clone();
    let handler: BrokerHandler = Arc::new(move |_t: &str, m: Message| {
        let n: u32 = String::from_utf8_lossy(&m.body).parse().unwrap_or(0);
        g.lock().unwrap_or_else(|e| e.into_inner()).push(n);
        Handled::ok()
    });
    sub.subscribe("stream", handler, SubscribeOptions::default()).await?;
    publisher.connect().await?;
    // 300 messages, one every 10 ms; the server is down for ~0.5 s in the middle.
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let stream = tokio::spawn(async move {
        // Every publish succeeds, the ones made while the server is down
        // included (the client buffers them until it reconnects).
        for i in 1..=300u32 {
            publisher.publish("stream", Message::new(i.to_string())).await?;
            s.store(i as usize, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher.disconnect().await
    });
    while sent.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nats.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.start_again().map_err(|e| e.to_string())?;
    stream.await??;
    // Give the last messages time to arrive.
    let t0 = Instant::now();
    while !got.lock().unwrap_or_else(|e| e.into_inner()).contains(&300) && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = got.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let lost = 300 - got.len();
    println!("nats restart during a 300-message stream: {lost} lost, {} received", got.len());
    // What is guaranteed (the README says the same): the subscriber resumes;
    // what was delivered before the kill arrived (bar what the server held
    // when it died); and from the first message that arrives after the
    // restart on, none is lost or duplicated — loss is confined to the outage.
    assert!(got.contains(&300), "the subscriber resumed after the restart");
    assert!(got.iter().filter(|&&n| n <= 100).count() >= 95, "messages before the restart arrived");
    let resumed = got.iter().copied().filter(|&n| n > 100).min().ok_or("nothing arrived after the restart")?;
    let after: Vec<u32> = got.iter().copied().filter(|&n| n >= resumed).collect();
    assert_eq!(
        after,
        (resumed..=300).collect::<Vec<_>>(),
        "after resuming at {resumed}: a gap, a duplicate or disorder"
    );
    Ok(())
}

/// With nats-server stopped, SIGTERM to a service on the NATS broker and to
/// `micro subscribe` ends each within a bound: the dead broker is logged
/// and skipped, not waited for until it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_while_nats_is_down() -> TestResult {
    let mut nats = Nats::start().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir()?;
    let env = [
        ("MICRO_BROKER", "nats".to_string()),
        ("MICRO_BROKER_ADDRESS", nats.address()),
        ("MICRO_REGISTRY", "local".to_string()),
        ("MICRO_REGISTRY_ADDRESS", dir.path().display().to_string()),
        ("MICRO_LOG_LEVEL", "info".to_string()),
    ];
    let svc = Proc(command(bin("greeter-service"), &env).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?);
    wait_registered(&env, "greeter", Duration::from_secs(20))?;
    let sub = subscriber(&nats, "events", None)?;
    nats.kill();
    let t0 = Instant::now();
    let o = tokio::task::block_in_place(|| svc.terminate(Duration::from_secs(40)))?;
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(took < Duration::from_secs(30), "the service took {took:?} to stop:\n{err}");
    assert!(err.contains("deregistered and stopped"), "{err}");
    let t0 = Instant::now();
    let o = tokio::task::block_in_place(|| sub.terminate(Duration::from_secs(40)))?;
    assert!(t0.elapsed() < Duration::from_secs(30), "micro subscribe took {:?} to stop", t0.elapsed());
    let _ = o;
    Ok(())
}

/// etcd meets the registry contract every registry meets
/// (`micro_testkit::contract::registry`): listing, watch events of one
/// service only, expiry after the TTL (a 2 s lease: etcd counts seconds)
/// heard as a delete, deregistration heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_meets_the_registry_contract() -> TestResult {
    let etcd = Etcd::start().map_err(|e| e.to_string())?;
    let reg = micro_etcd::EtcdRegistry::new(RegistryOptions { addresses: vec![etcd.address()], timeout: None });
    micro_testkit::contract::registry(&reg, "contract", Duration::from_secs(2), Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// NATS meets the broker contract every broker meets
/// (`micro_testkit::contract::broker`): fan-out in order with headers, a
/// queue group sharing each message exactly once, nothing after
/// unsubscribing; publisher and subscribers on connections of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_meets_the_broker_contract() -> TestResult {
    use micro::core::BrokerOptions;
    let nats = Nats::start().map_err(|e| e.to_string())?;
    let opts = || BrokerOptions { addresses: vec![nats.address()], registry: None, ..Default::default() };
    let (p, a, b) =
        (micro_nats::NatsBroker::new(opts()), micro_nats::NatsBroker::new(opts()), micro_nats::NatsBroker::new(opts()));
    micro_testkit::contract::broker(&p, &a, &b, "contract", Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
