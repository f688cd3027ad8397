//! micro across hosts, simulated with network namespaces on one bridge
//! (micro-testkit's `Hosts`; root and iproute2 needed, as in CI): etcd on
//! host 1, NATS on host 2, greeter nodes on hosts 3 and 4 bound to all
//! interfaces, the tools on host 5. Every process of the test runs "on" a
//! host; nothing leaves the namespaces.

mod common;

use common::*;
use micro_testkit::hosts::{Host, Hosts};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A command on `host` using etcd at `etcd`.
fn with_etcd(host: &Host, program: impl AsRef<std::ffi::OsStr>, etcd: &str) -> Command {
    let mut c = host.command(program);
    without_micro_env(&mut c)
        .env("MICRO_REGISTRY", "etcd")
        .env("MICRO_REGISTRY_ADDRESS", etcd)
        .env("MICRO_LOG_LEVEL", "warn");
    c
}

/// A command on `host` with the distributed set-up: etcd on host 1, NATS on host 2.
fn on(host: &Host, program: impl AsRef<std::ffi::OsStr>, etcd: &str, nats: &str) -> Command {
    let mut c = with_etcd(host, program, etcd);
    c.env("MICRO_BROKER", "nats").env("MICRO_BROKER_ADDRESS", nats);
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `cmd` until `ok` accepts its output (bounded).
fn until(
    mut cmd: impl FnMut() -> Command,
    what: &str,
    ok: impl Fn(&Output) -> bool,
) -> Result<Output, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    loop {
        let o = cmd().output()?;
        if ok(&o) {
            return Ok(o);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("{what}: not within 30 s; last: {}", text(&o)).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn calls_streams_and_pub_sub_cross_hosts() -> TestResult {
    let hosts = Hosts::create(5).map_err(|e| e.to_string())?;
    let (a, b, c, d, e) = (hosts.host(1), hosts.host(2), hosts.host(3), hosts.host(4), hosts.host(5));
    let etcd = format!("{}:2379", a.ip());
    let nats = format!("{}:4222", b.ip());

    // etcd on host 1, nats-server on host 2 (each host has its own ports).
    let data = tempfile::tempdir()?;
    let _etcd = start_etcd(a, data.path())?;
    let _nats = Proc(
        b.command(micro_testkit::find("nats-server").map_err(|e| e.to_string())?)
            .args(["-a", b.ip(), "-p", "4222"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    // Both servers answer (from host 5) before the services start: a
    // service does not start without its broker.
    until(
        || {
            let mut m = on(e, MICRO, &etcd, &nats);
            m.args(["services"]);
            m
        },
        "etcd on host 1",
        |o| o.status.success(),
    )?;
    until(
        || {
            let mut m = on(e, MICRO, &etcd, &nats);
            m.args(["publish", "ready", "{}"]);
            m
        },
        "nats-server on host 2",
        |o| o.status.success(),
    )?;
    // Two greeter nodes bound to all interfaces.
    let mut nodes = Vec::new();
    for h in [c, d] {
        let mut svc = on(h, bin("greeter-service"), &etcd, &nats);
        svc.args(["--server-address", "0.0.0.0:0"]).stdout(Stdio::null()).stderr(Stdio::null());
        nodes.push(Proc(svc.spawn()?));
    }

    // On host 5: both nodes listed, each at its own host's address.
    let o = greeter_nodes(e, &etcd, 2, "two greeter nodes in etcd")?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let mut addrs: Vec<String> = v[0]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["address"].as_str().map(|a| a.split(':').next().unwrap_or_default().to_string()))
        .collect();
    addrs.sort();
    assert_eq!(addrs, [c.ip(), d.ip()], "each node registered its own host's address");

    // Calls from host 5 reach both hosts.
    let o = on(e, bin("greeter-client"), &etcd, &nats)
        .args(["--whoami", "--count", "8", "--selector", "roundrobin", "--wait", "10s"])
        .output()?;
    assert!(o.status.success(), "{}", text(&o));
    let mut seen: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 2, "calls reached both nodes: {seen:?}");

    // A stream from host 5 to a node on another host.
    let o = on(e, MICRO, &etcd, &nats)
        .args(["call", "greeter", "Greeter.Count", r#"{"n": 3}"#, "--stream", "--output", "json"])
        .output()?;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3, "{}", text(&o));

    // Pub/sub across hosts through NATS on host 2: a subscriber on host 4, a publisher on host 5.
    let sub = Proc(
        on(d, MICRO, &etcd, &nats)
            .args(["subscribe", "cross.nats", "--count", "1", "--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let got = publish_until_received(sub, || {
        let mut p = on(e, MICRO, &etcd, &nats);
        p.args(["publish", "cross.nats", r#"{"via": "nats"}"#]);
        p
    })?;
    assert!(got.contains(r#""via":"nats""#), "{got}");

    // And through the HTTP broker: the subscriber on host 3 listens on all
    // interfaces and registers host 3's address in etcd; host 5 posts to it.
    let sub = Proc(
        on(c, MICRO, &etcd, &nats)
            .args(["subscribe", "cross.http", "--broker", "http", "--broker-address", "0.0.0.0:0", "--count", "1"])
            .args(["--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let got = publish_until_received(sub, || {
        let mut p = on(e, MICRO, &etcd, &nats);
        p.args(["publish", "cross.http", r#"{"via": "http"}"#, "--broker", "http"]);
        p
    })?;
    assert!(got.contains(r#""via":"http""#), "{got}");

    // The API gateway on host 5, bound to all interfaces, says where other
    // hosts reach it, and a request from host 3 gets through it to a greeter.
    let mut api = on(e, MICRO, &etcd, &nats);
    api.args(["api", "--address", "0.0.0.0:8080", "--namespace", "", "--output", "json"]);
    let mut api = Proc(api.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?);
    let lines = read_lines(api.0.stdout.take().ok_or("api stdout")?);
    wait_line(&lines, "listening")?;
    let first = lines.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
    let v: serde_json::Value = serde_json::from_str(&first)?;
    let url = format!("http://{}:8080", e.ip());
    assert_eq!(v["listening"], url.as_str(), "{first}");
    let post = format!(
        "import urllib.request as u; r = u.Request('{url}/greeter/hello', data=b'{{\"name\": \"hosts\"}}', \
         headers={{'Content-Type': 'application/json'}}); print(u.urlopen(r, timeout=10).read().decode())"
    );
    let o = run_bounded(c.command("python3").args(["-c", &post]), Duration::from_secs(30))?;
    assert!(o.status.success() && text(&o).contains("Hello hosts"), "{}", text(&o));
    drop(api);
    drop(nodes);
    Ok(())
}

/// Publishes (again, until the subscriber is in place) until `sub` has
/// received one message and exited; returns what it printed.
fn publish_until_received(
    mut sub: Proc,
    mut publish: impl FnMut() -> Command,
) -> Result<String, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    loop {
        let _ = publish().output()?;
        if sub.0.try_wait()?.is_some() {
            let o = sub.output(Duration::from_secs(5))?;
            return Ok(text(&o));
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("the subscriber on the other host received nothing within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A host that drops off the network while a client on another host calls
/// (3,000 calls, one every 5 ms, round robin over two nodes): no call
/// fails — calls on the dead connection fail over within their deadline
/// (the connection is given up once data stays unacknowledged for 3 s, and
/// a dial to the dead host takes at most half of a call's time), the node
/// leaves the registry within 3× its 3 s TTL, and once the cable is back it
/// registers again and answers calls again.
#[test]
fn a_host_that_drops_off_leaves_the_rotation_and_comes_back() -> TestResult {
    drop_off("mucp")
}

/// The same over grpc: tonic's connections get micro's socket options
/// (the 3 s `TCP_USER_TIMEOUT`) through micro's own connector.
#[test]
fn a_grpc_host_that_drops_off_leaves_the_rotation_and_comes_back() -> TestResult {
    drop_off("grpc")
}

fn drop_off(protocol: &str) -> TestResult {
    let hosts = Hosts::create(4).map_err(|e| e.to_string())?;
    let (a, c, d, e) = (hosts.host(1), hosts.host(2), hosts.host(3), hosts.host(4));
    let etcd = format!("{}:2379", a.ip());
    let data = tempfile::tempdir()?;
    let _etcd = start_etcd(a, data.path())?;
    let env = |h: &Host, program: &std::path::Path| {
        let mut c = with_etcd(h, program, &etcd);
        c.env("MICRO_SERVER", protocol).env("MICRO_CLIENT", protocol);
        c
    };
    let micro = std::path::Path::new(MICRO);
    until(
        || {
            let mut m = env(e, micro);
            m.arg("services");
            m
        },
        "etcd on host 1",
        |o| o.status.success(),
    )?;
    let mut nodes = Vec::new();
    for h in [c, d] {
        let mut svc = env(h, &bin("greeter-service"));
        svc.args(["--server-address", "0.0.0.0:0", "--register-ttl", "3s", "--register-interval", "1s"]);
        nodes.push(Proc(svc.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?));
    }
    let node_of = |host: &Host| -> Result<String, Box<dyn std::error::Error>> {
        let o = until(
            || {
                let mut m = env(e, micro);
                m.args(["describe", "greeter", "--output", "json"]);
                m
            },
            "both nodes registered",
            |o| {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
                v[0]["nodes"].as_array().is_some_and(|n| {
                    n.iter().any(|n| n["address"].as_str().is_some_and(|a| a.starts_with(&format!("{}:", host.ip()))))
                })
            },
        )?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        let id = v[0]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["address"].as_str().is_some_and(|a| a.starts_with(&format!("{}:", host.ip()))))
            .and_then(|n| n["id"].as_str())
            .ok_or("no node id")?;
        Ok(id.to_string())
    };
    let (c_id, d_id) = (node_of(c)?, node_of(d)?);

    // The client, its answers collected with the time each arrived.
    let mut client = env(e, &bin("greeter-client"));
    client.args(["--whoami", "--count", "3000", "--every", "5ms", "--selector", "roundrobin", "--wait", "10s"]);
    let mut client = Proc(client.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?);
    let stdout = client.0.stdout.take().ok_or("client stdout")?;
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let sink = answers.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), line));
        }
    });
    let count = |id: &str, since: Instant| {
        answers.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|(t, l)| *t >= since && l == id).count()
    };
    let wait_for = |what: &str, limit: Duration, f: &dyn Fn() -> bool| -> TestResult {
        let t0 = Instant::now();
        while !f() {
            if t0.elapsed() > limit {
                return Err(format!("{what}: not within {limit:?}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    let start = Instant::now();
    wait_for("both nodes answering", Duration::from_secs(20), &|| {
        count(&c_id, start) > 20 && count(&d_id, start) > 20
    })?;

    // Host 3's cable is cut.
    d.link(false).map_err(|e| e.to_string())?;
    let cut = Instant::now();
    // It leaves the registry within 3× its TTL (it can no longer renew it).
    let o = greeter_nodes(e, &etcd, 1, "host 3's node expired")?;
    assert!(cut.elapsed() < Duration::from_secs(9) + Duration::from_secs(2), "expired after {:?}", cut.elapsed());
    assert!(String::from_utf8_lossy(&o.stdout).contains(&c_id));
    let gone = Instant::now();
    wait_for("calls going on to host 2 alone", Duration::from_secs(10), &|| count(&c_id, gone) > 50)?;
    assert_eq!(count(&d_id, gone), 0, "the dropped host answered after it left");

    // The cable is back: the node registers again and answers again.
    d.link(true).map_err(|e| e.to_string())?;
    let back = Instant::now();
    wait_for("host 3 answering again", Duration::from_secs(20), &|| count(&d_id, back) > 5)?;

    // Every one of the 3,000 calls succeeded.
    let out = client.output(Duration::from_secs(60))?;
    assert!(out.status.success(), "a call failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(answers.lock().unwrap_or_else(|p| p.into_inner()).len(), 3000);
    drop(nodes);
    Ok(())
}

/// `micro describe greeter` on `host`, run until it lists `n` nodes (bounded).
fn greeter_nodes(host: &Host, etcd: &str, n: usize, what: &str) -> Result<Output, Box<dyn std::error::Error>> {
    until(
        || {
            let mut m = with_etcd(host, MICRO, etcd);
            m.args(["describe", "greeter", "--output", "json"]);
            m
        },
        what,
        |o| {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            v[0]["nodes"].as_array().is_some_and(|nodes| nodes.len() == n)
        },
    )
}

/// etcd on `host`, listening on its address (port 2379: every host has its own ports).
fn start_etcd(host: &Host, data: &std::path::Path) -> Result<Proc, Box<dyn std::error::Error>> {
    let url = format!("http://{}:2379", host.ip());
    Ok(Proc(
        host.command(micro_testkit::find("etcd").map_err(|e| e.to_string())?)
            .args(["--name", "a", "--data-dir"])
            .arg(data.join("etcd"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args([
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
            ])
            .args(["--initial-cluster", "a=http://127.0.0.1:2380"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

/// A bad path between a client and a service (micro-testkit's proxy on a
/// router host: the greeter on host 2 advertises the router's address, so
/// every call from host 4 crosses it): calls meet their deadlines or fail
/// with 408, a refused or reset connection is an error or a retry, never a
/// hang; a stream survives a stall and ends with an error when its
/// connection is reset, never silently.
#[test]
fn a_bad_path_delays_or_fails_calls_but_never_hangs_them() -> TestResult {
    use micro_testkit::proxy::Proxy;
    let hosts = Hosts::create(4).map_err(|e| e.to_string())?;
    let (a, svc_host, router, client) = (hosts.host(1), hosts.host(2), hosts.host(3), hosts.host(4));
    let etcd = format!("{}:2379", a.ip());
    let data = tempfile::tempdir()?;
    let _etcd = start_etcd(a, data.path())?;
    let micro = || with_etcd(client, MICRO, &etcd);
    until(
        || {
            let mut m = micro();
            m.arg("services");
            m
        },
        "etcd on host 1",
        |o| o.status.success(),
    )?;
    let proxy = Proxy::start_on(router, &format!("{}:9090", router.ip()), &format!("{}:9090", svc_host.ip()))
        .map_err(|e| e.to_string())?;
    let _greeter = Proc(
        with_etcd(svc_host, bin("greeter-service"), &etcd)
            .args(["--server-address", "0.0.0.0:9090", "--server-advertise", proxy.addr()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let o = greeter_nodes(client, &etcd, 1, "the greeter registered")?;
    assert!(String::from_utf8_lossy(&o.stdout).contains(proxy.addr()), "registered at the router's address");
    let call = |timeout: &str| -> Result<Output, Box<dyn std::error::Error>> {
        let mut m = micro();
        m.args(["call", "greeter", "Greeter.Hello", r#"{"name": "path"}"#, "--timeout", timeout]);
        run_bounded(&mut m, Duration::from_secs(20))
    };
    let o = call("5s")?;
    assert!(o.status.success(), "{}", text(&o));

    // 50 ms each way: a call with 5 s succeeds, one with 80 ms (less than a
    // round trip) fails with 408 and does not wait for the late reply.
    proxy.latency(Duration::from_millis(50));
    let o = call("5s")?;
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    let o = call("80ms")?;
    assert!(!o.status.success() && text(&o).contains("408"), "{}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(5), "the 80 ms call took {:?}", t0.elapsed());
    // A stream over the slow path gets every message.
    let o = run_bounded(
        micro().args(["call", "greeter", "Greeter.Count", r#"{"n": 5}"#, "--stream", "--output", "json"]),
        Duration::from_secs(20),
    )?;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 5, "{}", text(&o));
    proxy.latency(Duration::ZERO);

    // A stalled path (connections open, no byte through): the call ends
    // with 408 at its deadline.
    proxy.stall(true);
    let o = call("1s")?;
    assert!(!o.status.success() && text(&o).contains("408"), "{}", text(&o));
    proxy.stall(false);

    // A bidirectional stream survives a stall, and ends with an error (not
    // silently, not hanging with its input still open) when reset.
    let mut chat = micro();
    chat.args(["call", "greeter", "Greeter.Chat", "-", "--stream", "--output", "json"]);
    let mut chat = Proc(chat.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?);
    let mut input = chat.0.stdin.take().ok_or("chat stdin")?;
    let lines = read_lines(chat.0.stdout.take().ok_or("chat stdout")?);
    use std::io::Write;
    writeln!(input, r#"{{"name": "one"}}"#)?;
    wait_line(&lines, "Hello one")?;
    proxy.stall(true);
    writeln!(input, r#"{{"name": "two"}}"#)?;
    std::thread::sleep(Duration::from_millis(300));
    assert!(!lines.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|l| l.contains("Hello two")), "stalled");
    proxy.stall(false);
    wait_line(&lines, "Hello two")?;
    proxy.reset();
    let out = chat.output(Duration::from_secs(20))?;
    assert!(!out.status.success(), "a reset stream must end with an error: {}", text(&out));
    assert!(!out.stderr.is_empty(), "and say so");
    drop(input);

    // Refused connections: the call fails (after its retry), it does not hang.
    proxy.refuse(true);
    let o = call("3s")?;
    assert!(!o.status.success(), "{}", text(&o));
    proxy.refuse(false);

    // Connections reset every 200 ms under a run of calls: each call is
    // retried on a fresh connection and none fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let resetting = {
        let (flag, proxy) = (stop.clone(), &proxy);
        std::thread::scope(|s| {
            let resets = s.spawn(move || {
                let mut n = 0;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    proxy.reset();
                    n += 1;
                }
                n
            });
            let mut c = with_etcd(client, bin("greeter-client"), &etcd);
            c.args(["--count", "300", "--every", "10ms"]);
            let o = run_bounded(&mut c, Duration::from_secs(60));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (o, resets.join())
        })
    };
    let (o, resets) = resetting;
    let o = o?;
    assert!(o.status.success(), "a call failed under resets: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 300);
    assert!(resets.map_err(|_| "reset thread")? >= 5, "the path was reset during the calls");
    Ok(())
}

type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Collects a child's output lines as they come.
fn read_lines(r: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Default::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(l);
        }
    });
    lines
}

/// Waits (bounded) until a line containing `what` has come.
fn wait_line(lines: &Lines, what: &str) -> TestResult {
    let t0 = Instant::now();
    while !lines.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|l| l.contains(what)) {
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!("no {what:?} within 20 s").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// etcd partitioned from everything else: a client already calling goes on
/// calling from its cached view (after its watch on etcd has broken, too)
/// while the service's registration lapses
/// (etcd expires it: the service cannot renew), and once the partition
/// heals the service registers again by itself.
#[test]
fn a_partition_from_etcd_leaves_calls_going_and_heals() -> TestResult {
    let hosts = Hosts::create(3).map_err(|e| e.to_string())?;
    let (a, svc_host, client) = (hosts.host(1), hosts.host(2), hosts.host(3));
    let etcd = format!("{}:2379", a.ip());
    let data = tempfile::tempdir()?;
    let _etcd = start_etcd(a, data.path())?;
    until(
        || {
            let mut m = with_etcd(client, MICRO, &etcd);
            m.arg("services");
            m
        },
        "etcd on host 1",
        |o| o.status.success(),
    )?;
    let _greeter = Proc(
        with_etcd(svc_host, bin("greeter-service"), &etcd)
            .args(["--server-address", "0.0.0.0:0", "--register-ttl", "3s", "--register-interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    greeter_nodes(client, &etcd, 1, "the greeter registered")?;

    let mut calls = with_etcd(client, bin("greeter-client"), &etcd);
    // About 20 s of calls: the partition outlasts the client's watch on
    // etcd (its connection is given up within 15 s of the cut).
    calls.args(["--count", "2000", "--every", "10ms"]);
    let mut calls = Proc(calls.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?);
    let answers = read_lines(calls.0.stdout.take().ok_or("client stdout")?);
    let answered = || answers.lock().unwrap_or_else(|p| p.into_inner()).len();
    let wait_answers = |n: usize| -> TestResult {
        let t0 = Instant::now();
        while answered() < n {
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!("{} answers of {n} within 20 s", answered()).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    };
    wait_answers(50)?;

    // The partition. Seen from etcd's own host, the registration lapses.
    a.link(false).map_err(|e| e.to_string())?;
    greeter_nodes_gone(a, &etcd)?;
    // Calls go on after the lapse, from the client's cached view.
    let lapsed = answered();
    if let Err(e) = wait_answers(lapsed + 100) {
        let out = calls.terminate(Duration::from_secs(5))?;
        return Err(format!("{e}; the client said: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let out = calls.output(Duration::from_secs(60))?;
    assert!(out.status.success(), "a call failed during the partition: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(answered(), 2000);

    // Healed: the service registers again by itself, and new clients find it.
    a.link(true).map_err(|e| e.to_string())?;
    greeter_nodes(client, &etcd, 1, "the greeter registering again after the partition")?;
    let o =
        run_bounded(with_etcd(client, bin("greeter-client"), &etcd).args(["--count", "3"]), Duration::from_secs(30))?;
    assert!(o.status.success(), "{}", text(&o));
    Ok(())
}

/// Waits until `micro describe greeter` on `host` says the service is not found.
fn greeter_nodes_gone(host: &Host, etcd: &str) -> TestResult {
    until(
        || {
            let mut m = with_etcd(host, MICRO, etcd);
            m.args(["describe", "greeter", "--output", "json"]);
            m
        },
        "the greeter gone from etcd",
        |o| !o.status.success() && text(o).contains("not found"),
    )
    .map(|_| ())
}

/// The zero-set-up path across hosts: the mdns registry and the HTTP broker
/// on three hosts of one network, and no address given anywhere. With
/// mdns, servers and the broker's listener bind all interfaces and announce
/// their host's address: calls from host 3 reach the greeters on hosts 1
/// and 2, and an event published on host 3 reaches both.
#[test]
fn the_zero_setup_defaults_work_across_hosts() -> TestResult {
    let hosts = Hosts::create(3).map_err(|e| e.to_string())?;
    let (h1, h2, h3) = (hosts.host(1), hosts.host(2), hosts.host(3));
    let zero = |h: &Host, program: &std::path::Path| {
        let mut c = h.command(program);
        without_micro_env(&mut c)
            .env("MICRO_REGISTRY", "mdns")
            .env("MICRO_BROKER", "http")
            .env("MICRO_LOG_LEVEL", "warn");
        c
    };
    let mut nodes = Vec::new();
    for h in [h1, h2] {
        nodes.push(Proc(zero(h, &bin("greeter-service")).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?));
    }
    let micro = std::path::Path::new(MICRO);
    let o = until(
        || {
            let mut m = zero(h3, micro);
            m.args(["describe", "greeter", "--output", "json"]);
            m
        },
        "both greeters found over mDNS from host 3",
        |o| {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            v[0]["nodes"].as_array().is_some_and(|n| n.len() == 2)
        },
    )?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let mut addrs: Vec<String> = v[0]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["address"].as_str().map(String::from))
        .collect();
    addrs.sort();
    let hosts_of: Vec<&str> = addrs.iter().map(|a| a.split(':').next().unwrap_or_default()).collect();
    assert_eq!(hosts_of, [h1.ip(), h2.ip()], "each greeter announced its own host's address");

    // Calls from host 3 reach both hosts. A fresh client process may call
    // before mDNS has brought it the second node (its `--wait` waits for
    // one), so a run that reached only one host is tried again, at most 5
    // runs; each run on its own must reach both.
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..5 {
        let o = run_bounded(
            zero(h3, &bin("greeter-client")).args([
                "--whoami",
                "--count",
                "8",
                "--selector",
                "roundrobin",
                "--wait",
                "20s",
            ]),
            Duration::from_secs(60),
        )?;
        assert!(o.status.success(), "{}", text(&o));
        seen = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
        seen.sort();
        seen.dedup();
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "calls reached both hosts: {seen:?}");

    // An event published on host 3 reaches the greeters' subscriptions on
    // hosts 1 and 2 (the HTTP broker posts to each host's listener).
    let received = |addr: &str| -> Result<u64, Box<dyn std::error::Error>> {
        let o = run_bounded(
            zero(h3, micro).args(["call", "greeter", "Greeter.Events", "{}", "--address", addr, "--output", "json"]),
            Duration::from_secs(30),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("{e}: {}", text(&o)))?;
        Ok(v["received"].as_u64().unwrap_or_default())
    };
    let t0 = Instant::now();
    loop {
        let o = run_bounded(zero(h3, micro).args(["publish", "greeter.events", "{}"]), Duration::from_secs(30))?;
        assert!(o.status.success(), "{}", text(&o));
        if received(&addrs[0])? > 0 && received(&addrs[1])? > 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("an event published on host 3 did not reach both greeters within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(nodes);
    Ok(())
}
