//! The `micro` tool against real service processes: output parsed, JSON
//! shapes, error exits, the HTTP gateway through a real HTTP client, pub/sub
//! across processes, and `micro new` building and answering.

mod common;

use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> std::io::Result<Self> {
        Ok(World { dir: tempfile::tempdir()? })
    }
    fn env(&self, c: &mut Command) {
        without_micro_env(c)
            .env("MICRO_REGISTRY", "local")
            .env("MICRO_REGISTRY_ADDRESS", self.dir.path().join("registry"))
            .env("MICRO_BROKER", "http")
            .env("MICRO_LOG_LEVEL", "warn");
    }
    fn micro(&self, args: &[&str]) -> std::io::Result<Output> {
        let mut c = Command::new(MICRO);
        self.env(&mut c);
        c.args(args).output()
    }
    fn greeter(&self) -> std::io::Result<Proc> {
        let mut c = Command::new(bin("greeter-service"));
        self.env(&mut c);
        Ok(Proc(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?))
    }
    /// Waits until `micro services` counts `n` greeter nodes (bounded).
    fn greeter_nodes(&self, n: u64) -> Result<(), Box<dyn std::error::Error>> {
        let t0 = Instant::now();
        loop {
            let o = self.micro(&["services", "--output", "json"])?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if v.as_array().and_then(|a| a.iter().find(|s| s["name"] == "greeter")).is_some_and(|g| g["nodes"] == n) {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!("{n} greeter nodes never registered: {}", out(&o)).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn registered(&self) -> Result<(), Box<dyn std::error::Error>> {
        let t0 = Instant::now();
        loop {
            let o = self.micro(&["services", "--output", "json"])?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if v.as_array().is_some_and(|a| a.iter().any(|s| s["name"] == "greeter")) {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!("greeter never registered: {}", String::from_utf8_lossy(&o.stderr)).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn services_describe_call_and_health() -> TestResult {
    let w = World::new()?;
    let _a = w.greeter()?;
    let _b = w.greeter()?;
    w.greeter_nodes(2)?;

    let o = w.micro(&["services"])?;
    assert!(o.status.success(), "{}", err(&o));
    let table = out(&o);
    let row = table.lines().find(|l| l.starts_with("greeter ")).ok_or(format!("no greeter row:\n{table}"))?;
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols, ["greeter", "1.0.0", "2"], "{table}");
    let o = w.micro(&["services", "--output", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let g = v.as_array().and_then(|a| a.iter().find(|s| s["name"] == "greeter")).ok_or("no greeter")?;
    assert_eq!(g["versions"], serde_json::json!(["1.0.0"]));
    assert_eq!(g["nodes"], 2);

    let o = w.micro(&["describe", "greeter"])?;
    let text = out(&o);
    assert!(text.contains("service  greeter  version 1.0.0"), "{text}");
    let hello = text.lines().find(|l| l.starts_with("Greeter.Hello")).ok_or("no endpoint row")?;
    assert_eq!(hello.split_whitespace().collect::<Vec<_>>(), ["Greeter.Hello", "HelloRequest", "HelloResponse"]);
    let o = w.micro(&["describe", "greeter", "--output", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v[0]["nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(v[0]["nodes"][0]["metadata"]["protocol"], "mucp");

    let o = w.micro(&["call", "greeter", "Greeter.Hello", r#"{"name": "John"}"#])?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "{\n  \"greeting\": \"Hello John\"\n}\n");
    let o =
        w.micro(&["call", "greeter", "Greeter.Hello", r#"{"name": ""}"#, "--metadata", "trace=1", "--timeout", "2s"])?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o).trim(),
        r#"error: {"id":"greeter","code":400,"detail":"name must not be empty","status":"Bad Request"}"#
    );
    let o = w.micro(&["call", "nobody", "X.Y"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains(r#""code":404,"detail":"service nobody: not found""#), "{}", err(&o));
    let o = w.micro(&["call", "greeter", "Greeter.Hello", "{not json"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("not valid JSON"), "{}", err(&o));

    let o = w.micro(&["health", "greeter"])?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).lines().filter(|l| l.contains(" healthy ")).count(), 2, "{}", out(&o));
    let o = w.micro(&["health", "greeter", "--output", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert!(v.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|n| n["healthy"] == true)), "{v}");
    Ok(())
}

/// The greeter on the `grpc` server, called by the tool's `grpc` client
/// (JSON as `application/grpc+json`), streams from the command line over
/// both protocols.
#[test]
fn grpc_and_streams_from_the_command_line() -> TestResult {
    let w = World::new()?;
    let mut c = Command::new(bin("greeter-service"));
    w.env(&mut c);
    let _grpc = Proc(c.env("MICRO_SERVER", "grpc").stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    w.registered()?;
    let o = w.micro(&["describe", "greeter", "--output", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v[0]["nodes"][0]["metadata"]["protocol"], "grpc");
    let count = v[0]["endpoints"].as_array().and_then(|e| e.iter().find(|e| e["name"] == "Greeter.Count")).cloned();
    assert_eq!(count.ok_or("no Greeter.Count")?["metadata"]["stream"], "true");

    let o = w.micro(&["call", "greeter", "Greeter.Hello", r#"{"name": "gRPC"}"#, "--client", "grpc"])?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "{\n  \"greeting\": \"Hello gRPC\"\n}\n");
    let o = w.micro(&["call", "greeter", "Greeter.Hello", r#"{"name": ""}"#, "--client", "grpc"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains(r#""code":400,"detail":"name must not be empty""#), "{}", err(&o));

    let stream = |client: &str| -> std::io::Result<Output> {
        w.micro(&[
            "call",
            "greeter",
            "Greeter.Count",
            r#"{"n": 3}"#,
            "--stream",
            "--output",
            "json",
            "--client",
            client,
        ])
    };
    let o = stream("grpc")?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "{\"i\":1}\n{\"i\":2}\n{\"i\":3}\n");
    let o = w.micro(&["call", "greeter", "Greeter.Count", r#"{"n": 100000}"#, "--stream", "--client", "grpc"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("n must be at most 10000"), "{}", err(&o));

    // Bidirectional from stdin, one message per line.
    let mut c = Command::new(MICRO);
    w.env(&mut c);
    let mut child = c
        .args(["call", "greeter", "Greeter.Chat", "-", "--stream", "--output", "json", "--client", "grpc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"{\"name\": \"a\"}\n{\"name\": \"b\"}\n")?;
    }
    let o = child.wait_with_output()?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "{\"greeting\":\"Hello a\"}\n{\"greeting\":\"Hello b\"}\n");

    // The same stream over mucp, from a greeter on the default server.
    let w2 = World::new()?;
    let _mucp = w2.greeter()?;
    w2.registered()?;
    let o = w2.micro(&["call", "greeter", "Greeter.Count", r#"{"n": 2}"#, "--stream", "--output", "json"])?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "{\"i\":1}\n{\"i\":2}\n");
    Ok(())
}

#[test]
fn health_reports_a_dead_node() -> TestResult {
    let w = World::new()?;
    let mut a = w.greeter()?;
    w.registered()?;
    a.0.kill()?; // SIGKILL: its registration stays until the TTL
    a.0.wait()?;
    let o = w.micro(&["health", "greeter"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("unhealthy"), "{}", out(&o));
    assert!(err(&o).contains("1 of 1 nodes of greeter are unhealthy"), "{}", err(&o));
    Ok(())
}

#[test]
fn pub_sub_across_processes_through_the_http_broker() -> TestResult {
    let w = World::new()?;
    let _svc = w.greeter()?;
    w.registered()?;
    // A subscriber process, and publishers in other processes.
    let mut c = Command::new(MICRO);
    w.env(&mut c);
    let mut sub = Proc(
        c.args(["subscribe", "greeter.events", "--count", "2", "--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    // Wait until the subscription is in the registry.
    let t0 = Instant::now();
    loop {
        let o = w.micro(&["describe", "micro.http.broker", "--output", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let nodes = v
            .as_array()
            .map(|a| a.iter().map(|s| s["nodes"].as_array().map(Vec::len).unwrap_or(0)).sum::<usize>())
            .unwrap_or(0);
        if nodes >= 2 {
            break; // the greeter's subscriber and ours
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err("subscriptions never registered".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in 1..=2 {
        let o = w.micro(&["publish", "greeter.events", &format!(r#"{{"n": {n}}}"#)])?;
        assert!(o.status.success(), "{}", err(&o));
        assert_eq!(out(&o), "published to greeter.events\n");
    }
    let stdout = sub.0.stdout.take().ok_or("no stdout")?;
    let lines: Vec<serde_json::Value> =
        BufReader::new(stdout).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["topic"], "greeter.events");
    assert_eq!(lines[0]["body"]["n"], 1);
    assert_eq!(lines[1]["body"]["n"], 2);
    assert_eq!(lines[0]["header"]["Content-Type"], "application/json");
    // The service's subscriber got them too, in its own process.
    let o = w.micro(&["call", "greeter", "Greeter.Events"])?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["received"], 2);
    Ok(())
}

async fn http(
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> Result<(u16, hyper::HeaderMap, serde_json::Value), Box<dyn std::error::Error>> {
    http_with(method, uri, body, &[("Content-Type", "application/json")]).await
}

async fn http_with(
    method: &str,
    uri: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Result<(u16, hyper::HeaderMap, serde_json::Value), Box<dyn std::error::Error>> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into()))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v = if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes)? };
    Ok((status, headers, v))
}

/// The gateway as most tests want it: every service exposed, small bodies.
fn start_api(w: &World, extra: &[&str]) -> Result<(Proc, String), Box<dyn std::error::Error>> {
    let mut args = vec!["--address", "127.0.0.1:0", "--max-body", "1024", "--namespace="];
    args.extend_from_slice(extra);
    spawn_api(w, &args)
}

/// `micro api` with `args`; returns the process and its base URL.
fn spawn_api(w: &World, args: &[&str]) -> Result<(Proc, String), Box<dyn std::error::Error>> {
    let mut c = Command::new(MICRO);
    w.env(&mut c);
    let mut p = Proc(c.arg("api").args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?);
    let stdout = p.0.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let base = line
        .trim()
        .strip_prefix("micro api listening on ")
        .ok_or(format!("unexpected first line {line:?}"))?
        .to_string();
    Ok((p, base))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_gateway_maps_paths_and_errors_like_go_micro() -> TestResult {
    let w = World::new()?;
    let _svc = w.greeter()?;
    tokio::task::block_in_place(|| w.registered())?;
    let (_api, base) = start_api(&w, &[])?;

    let (code, headers, v) = http("POST", &format!("{base}/greeter/hello"), br#"{"name":"John"}"#.to_vec()).await?;
    assert_eq!((code, v["greeting"].as_str()), (200, Some("Hello John")));
    assert!(headers.get("access-control-allow-origin").is_none(), "CORS is off by default");
    let (code, _, v) = http("POST", &format!("{base}/greeter/greeter/hello"), br#"{"name":"Jane"}"#.to_vec()).await?;
    assert_eq!((code, v["greeting"].as_str()), (200, Some("Hello Jane")));

    // Errors keep go-micro's JSON shape and their HTTP status.
    let (code, _, v) = http("POST", &format!("{base}/greeter/hello"), br#"{"name":""}"#.to_vec()).await?;
    assert_eq!(code, 400);
    assert_eq!(
        v,
        serde_json::json!({"id":"greeter","code":400,"detail":"name must not be empty","status":"Bad Request"})
    );
    let (code, _, v) = http("POST", &format!("{base}/nobody/hello"), b"{}".to_vec()).await?;
    assert_eq!(code, 404);
    assert_eq!((v["id"].as_str(), v["detail"].as_str()), (Some("go.micro.client"), Some("service nobody: not found")));
    let (code, _, v) = http("POST", &format!("{base}/greeter/nope"), b"{}".to_vec()).await?;
    assert_eq!((code, v["id"].as_str()), (404, Some("go.micro.server")));
    let (code, _, v) = http("POST", &format!("{base}/greeter/hello"), b"{oops".to_vec()).await?;
    assert_eq!((code, v["code"].as_i64()), (400, Some(400)));
    let (code, _, v) = http("POST", &format!("{base}/greeter/hello"), vec![b' '; 4096]).await?;
    assert_eq!((code, v["code"].as_i64(), v["status"].as_str()), (413, Some(413), Some("Request Entity Too Large")));
    let (code, _, _) = http("DELETE", &format!("{base}/greeter/hello"), Vec::new()).await?;
    assert_eq!(code, 405);
    Ok(())
}

/// A web page must not drive services through a gateway on localhost: a
/// request with an `Origin` the operator did not allow is refused (cross-site
/// requests and DNS rebinding both carry one), a POST that does not say it is
/// JSON (a form post) is refused, and only allowed headers reach the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_gateway_is_safe_next_to_a_browser() -> TestResult {
    let w = World::new()?;
    let _svc = w.greeter()?;
    tokio::task::block_in_place(|| w.registered())?;
    let (_api, base) = start_api(&w, &["--cors-origin", "https://app.example"])?;
    let url = format!("{base}/greeter/hello");
    let json = ("Content-Type", "application/json");
    let body = br#"{"name":"John"}"#.to_vec();

    let (code, headers, v) = http_with("POST", &url, body.clone(), &[json, ("Origin", "http://evil.example")]).await?;
    assert_eq!(code, 403, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("--cors-origin http://evil.example"), "{v}");
    assert!(headers.get("access-control-allow-origin").is_none());
    // DNS rebinding: the page's origin is the attacker's name, whatever the Host.
    let rebound = [json, ("Origin", "http://rebind.example:8080"), ("Host", "rebind.example:8080")];
    assert_eq!(http_with("POST", &url, body.clone(), &rebound).await?.0, 403);
    // The allowed origin gets through, with CORS headers naming it.
    let (code, headers, v) = http_with("POST", &url, body.clone(), &[json, ("Origin", "https://app.example")]).await?;
    assert_eq!((code, v["greeting"].as_str()), (200, Some("Hello John")));
    assert_eq!(headers.get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("https://app.example"));
    let allow = headers.get("access-control-allow-headers").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(allow.contains("authorization") && allow.contains("x-request-id"), "the forwarded headers: {allow}");
    // A form post is what a page can send without a preflight.
    let (code, _, v) = http_with("POST", &url, body.clone(), &[("Content-Type", "text/plain")]).await?;
    assert_eq!(code, 415, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("Content-Type: application/json"), "{v}");
    // Only allowed headers become metadata: never Micro-* or hop-by-hop ones.
    let sent = [
        json,
        ("Authorization", "Bearer t"),
        ("X-Request-Id", "r1"),
        ("Micro-Service", "evil"),
        ("Micro-From-Service", "evil"),
        ("Cookie", "session=1"),
        ("X-Other", "no"),
    ];
    let (code, _, v) = http_with("POST", &format!("{base}/greeter/metadata"), b"{}".to_vec(), &sent).await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["authorization"], "Bearer t");
    assert_eq!(v["x-request-id"], "r1");
    for k in ["micro-from-service", "cookie", "x-other", "connection", "host"] {
        assert!(v.get(k).is_none(), "{k} was forwarded: {v}");
    }
    assert_ne!(v.get("Micro-From-Service").and_then(|x| x.as_str()), Some("evil"), "{v}");
    // OPTIONS without CORS for the origin, and a method that is not allowed, say what to do.
    let (code, _, v) = http_with("DELETE", &url, Vec::new(), &[]).await?;
    assert_eq!(code, 405);
    assert!(v["detail"].as_str().unwrap_or("").contains("POST and GET"), "{v}");
    Ok(())
}

/// A call that runs past the gateway's `--timeout` is a 408 with go-micro's
/// error JSON, not a hung request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_gateway_answers_408_when_a_call_runs_past_its_timeout() -> TestResult {
    let w = World::new()?;
    let _svc = w.greeter()?;
    w.registered()?;
    let (_api, base) = start_api(&w, &["--timeout", "300ms"])?;
    let t0 = Instant::now();
    let (code, _, v) = http("POST", &format!("{base}/greeter/sleep"), br#"{"ms": 5000}"#.to_vec()).await?;
    assert_eq!(code, 408, "{v}");
    assert_eq!(v["code"], 408, "{v}");
    assert!(t0.elapsed() < Duration::from_secs(4), "answered at the timeout, not after the call: {:?}", t0.elapsed());
    Ok(())
}

/// The default namespace is go-micro's `go.micro.api`: only services meant
/// for the edge are exposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_gateway_exposes_only_its_namespace_by_default() -> TestResult {
    let w = World::new()?;
    let _svc = w.greeter()?;
    tokio::task::block_in_place(|| w.registered())?;
    let (p, base) = spawn_api(&w, &["--address", "127.0.0.1:0"])?;
    let (code, _, v) = http("POST", &format!("{base}/greeter/hello"), br#"{"name":"J"}"#.to_vec()).await?;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["detail"], "service go.micro.api.greeter: not found");
    drop(p);
    Ok(())
}

/// Connections are capped (the next one is closed on accept), and a body
/// that dribbles is cut off at the call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_gateway_bounds_connections_and_slow_bodies() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::new()?;
    let (_api, base) = start_api(&w, &["--max-connections", "2", "--timeout", "500ms"])?;
    let addr = base.trim_start_matches("http://").to_string();
    // A body announced and never sent: answered 408 at the call timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await?;
    slow.write_all(
        b"POST /greeter/hello HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await?;
    let mut answer = vec![0u8; 4096];
    let t0 = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(slow);
    // Two idle connections take both slots: the third is closed on accept.
    let _a = tokio::net::TcpStream::connect(&addr).await?;
    let _b = tokio::net::TcpStream::connect(&addr).await?;
    let mut c = tokio::net::TcpStream::connect(&addr).await?;
    c.write_all(b"POST /greeter/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").await?;
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut answer)).await?.unwrap_or(0);
    assert_eq!(n, 0, "over the cap: closed, not served ({})", String::from_utf8_lossy(&answer[..n]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_gateway_answers_cors_when_asked() -> TestResult {
    let w = World::new()?;
    let (_api, base) = start_api(&w, &["--cors"])?;
    let (code, headers, _) = http("OPTIONS", &format!("{base}/greeter/hello"), Vec::new()).await?;
    assert_eq!(code, 204);
    assert_eq!(headers.get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("*"));
    Ok(())
}

#[test]
fn completion_and_help() -> TestResult {
    let o = Command::new(MICRO).args(["completion", "bash"]).output()?;
    assert!(o.status.success());
    assert!(out(&o).contains("_micro()"), "a bash completion function");
    // Each command's help: its own flags, the micro flags it uses (and no
    // server flag the tool never uses), an example, and one screen for the
    // commands typed most.
    let uses: &[(&[&str], &[&str])] = &[
        (&["services"], &["--registry <REGISTRY>"]),
        (&["describe"], &["--registry <REGISTRY>"]),
        (&["call"], &["--registry <REGISTRY>", "--client <CLIENT>", "--stream", "--output <OUTPUT>"]),
        (&["publish"], &["--broker <BROKER>"]),
        (&["subscribe"], &["--broker <BROKER>", "--queue <QUEUE>"]),
        (&["health"], &["--registry <REGISTRY>", "--client <CLIENT>"]),
        (&["api"], &["--registry <REGISTRY>", "--cors-origin"]),
        (&["new"], &["--micro-path <DIR>", "--micro-git <URL>"]),
        (&["plugin", "build"], &["--out <FILE.so>", "--type <TYPE>"]),
        (&["plugin", "generate"], &["--out <DIR>"]),
        (&["plugin", "inspect"], &["--plugin-allow-insecure"]),
        (&["completion"], &[]),
    ];
    for (cmd, flags) in uses {
        let o = Command::new(MICRO).args(*cmd).arg("--help").output()?;
        assert!(o.status.success(), "{cmd:?} --help");
        let text = out(&o);
        assert!(text.contains("Usage: micro"), "{cmd:?}: {text}");
        for f in *flags {
            assert!(text.contains(f), "{cmd:?} --help lists {f}:\n{text}");
        }
        for f in ["--server-name", "--register-ttl", "--server-max-in-flight", "--client-pool-size"] {
            assert!(!text.contains(f), "{cmd:?} --help leaves out {f}:\n{text}");
        }
        if !["publish", "subscribe"].contains(&cmd[0]) {
            assert!(!text.contains("--broker <BROKER>"), "{cmd:?} --help leaves out the broker:\n{text}");
        }
        assert!(text.contains("Example"), "{cmd:?} --help has an example:\n{text}");
        if ["services", "describe", "call", "publish", "subscribe", "health"].contains(&cmd[0]) {
            let lines = text.lines().count();
            assert!(lines <= 60, "{cmd:?} --help fits on one screen: {lines} lines:\n{text}");
        }
    }
    // The flags left out of a command's help still work there.
    let o = Command::new(MICRO).args(["services", "--server-name", "x", "--help"]).output()?;
    assert!(o.status.success(), "{}", err(&o));
    // --output: honoured by every command that prints, refused where it cannot apply.
    let o = Command::new(MICRO).args(["completion", "bash", "--output", "json"]).output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("--output does not apply to `micro completion`"), "{}", err(&o));
    let o = Command::new(MICRO).args(["completion", "bash"]).env("MICRO_OUTPUT", "json").output()?;
    assert!(o.status.success(), "an exported MICRO_OUTPUT does not break completion: {}", err(&o));
    Ok(())
}

/// A clean copy of this repository's tracked files (as they are in the
/// working tree), elsewhere on disk: what another user's checkout is.
fn copy_of_repository(to: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::ffi::OsStrExt;
    let o = Command::new("git").current_dir(root()).args(["ls-files", "-z"]).output()?;
    if !o.status.success() {
        return Err(format!("git ls-files: {}", err(&o)).into());
    }
    for rel in o.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let rel = std::path::Path::new(std::ffi::OsStr::from_bytes(rel));
        let from = root().join(rel);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = to.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to)?;
    }
    Ok(())
}

/// What the tool generates builds anywhere: a scaffold made with
/// `--micro-path` pointing at a copy of the repository elsewhere on disk
/// builds (offline, with that copy's lock file) and answers; a plugin crate
/// of that copy is built by this checkout's tool against the copy's own
/// micro-plugin (no "package collision") and loads into this checkout's
/// binaries; a copy whose plugin ABI differs is refused before compiling,
/// naming both ABIs; by default a scaffold names micro by version.
#[test]
fn generated_projects_build_from_another_checkout() -> TestResult {
    let w = World::new()?;
    let copy = w.dir.path().join("elsewhere").join("micro");
    copy_of_repository(&copy)?;

    // By default: a version, no path of this machine, no lock file.
    let plain = w.dir.path().join("plain-svc");
    let o = w.micro(&["new", plain.to_str().ok_or("path")?])?;
    assert!(o.status.success(), "{}", err(&o));
    let manifest = std::fs::read_to_string(plain.join("Cargo.toml"))?;
    assert!(manifest.contains(&format!("micro = \"{}\"", env!("CARGO_PKG_VERSION"))), "{manifest}");
    assert!(!manifest.contains(&root().canonicalize()?.display().to_string()), "{manifest}");
    assert!(out(&o).contains("--micro-path"), "says how to use a checkout: {}", out(&o));

    let dir = w.dir.path().join("hello-svc");
    let o = w.micro(&["new", dir.to_str().ok_or("path")?, "--micro-path", copy.to_str().ok_or("path")?])?;
    assert!(o.status.success(), "{}", err(&o));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
    let copy_crate = copy.canonicalize()?.join("crates/micro");
    assert!(manifest.contains(&format!("micro = {{ path = {:?} }}", copy_crate.display().to_string())), "{manifest}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let b = Command::new(&cargo)
        .current_dir(&dir)
        .args(["build", "--offline", "--target-dir"])
        .arg(plugin_target())
        .output()?;
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let mut c = Command::new(plugin_target().join("debug/hello-svc"));
    w.env(&mut c);
    let _svc = Proc(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    let call = |extra: &[&str]| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let t0 = Instant::now();
        loop {
            let mut args = vec!["call", "hello-svc", "HelloSvc.Call", r#"{"name": "John"}"#];
            args.extend_from_slice(extra);
            let o = w.micro(&args)?;
            if o.status.success() {
                return Ok(serde_json::from_slice(&o.stdout)?);
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!("the new service never answered: {}", err(&o)).into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(call(&[])?["msg"], "Hello John");

    // `--proto`: a service generated from its .proto by the copy's
    // micro-build builds offline too, answers, and describes its fields.
    let pdir = w.dir.path().join("proto-svc");
    let o = w.micro(&["new", pdir.to_str().ok_or("path")?, "--proto", "--micro-path", copy.to_str().ok_or("path")?])?;
    assert!(o.status.success(), "{}", err(&o));
    let manifest = std::fs::read_to_string(pdir.join("Cargo.toml"))?;
    let copy_build = copy.canonicalize()?.join("crates/micro-build");
    assert!(
        manifest.contains(&format!("micro-build = {{ path = {:?} }}", copy_build.display().to_string())),
        "{manifest}"
    );
    let b = Command::new(&cargo)
        .current_dir(&pdir)
        .args(["build", "--offline", "--target-dir"])
        .arg(plugin_target())
        .output()?;
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert!(!String::from_utf8_lossy(&b.stderr).contains("warning:"), "{}", String::from_utf8_lossy(&b.stderr));
    let mut c = Command::new(plugin_target().join("debug/proto-svc"));
    w.env(&mut c);
    let _proto_svc = Proc(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    let t0 = Instant::now();
    let answer = loop {
        let o = w.micro(&["call", "proto-svc", "ProtoSvc.Call", r#"{"name": "Proto"}"#, "--output", "json"])?;
        if o.status.success() {
            break out(&o);
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!("the --proto service never answered: {}", err(&o)).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(answer.trim(), r#"{"msg":"Hello Proto"}"#);
    let o = w.micro(&["describe", "proto-svc"])?;
    assert!(out(&o).contains("Endpoint: ProtoSvc.Call\n\nRequest: {\n\tname string\n}"), "{}", out(&o));

    // The copy's brpc plugin, built by this checkout's tool, called through by this checkout's tool.
    let so = w.dir.path().join("brpc-elsewhere.so");
    let build = |so: &std::path::Path| {
        Command::new(MICRO)
            .args(["plugin", "build", "--name", "brpc", "--type", "client", "--new-func", "new_client"])
            .args(["--debug", "--offline", "--path"])
            .arg(copy.join("examples/plugins/brpc"))
            .arg("-o")
            .arg(so)
            .arg("--target-dir")
            .arg(plugin_target())
            .env_remove("MICRO_SOURCE")
            .output()
    };
    let o = build(&so)?;
    assert!(o.status.success(), "{}", err(&o));
    let generated = std::fs::read_to_string(w.dir.path().join(".micro-plugin-build/brpc/Cargo.toml"))?;
    let copy_plugin = copy.canonicalize()?.join("crates/micro-plugin");
    assert!(
        generated.contains(&format!("micro-plugin = {{ path = {:?} }}", copy_plugin.display().to_string())),
        "{generated}"
    );
    let so_arg = format!("--plugin={}", so.display());
    assert_eq!(call(&[&so_arg, "--client", "brpc"])?["msg"], "Hello John");

    // A checkout of another plugin ABI: refused before cargo runs, saying both.
    let abi = copy.join("crates/micro-plugin/src/abi.rs");
    let text = std::fs::read_to_string(&abi)?;
    let line = text.lines().find(|l| l.starts_with("pub const ABI_VERSION: u32 =")).ok_or("no ABI_VERSION")?;
    std::fs::write(&abi, text.replace(line, "pub const ABI_VERSION: u32 = 999;"))?;
    let o = build(&w.dir.path().join("never.so"))?;
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    let e = err(&o);
    assert!(e.contains("(plugin ABI 999)") && e.contains("this micro loads plugin ABI"), "{e}");
    assert!(!w.dir.path().join("never.so").exists());
    Ok(())
}

/// Another user on the machine creates the default registry directory first
/// (no `XDG_RUNTIME_DIR`: cron, `sudo -u`, containers), mode 777 with a fake
/// `greeter` node pointing at their own listener. The real user's tools and
/// services must refuse that directory, saying what to fix, instead of
/// sending calls to the other user.
#[test]
fn another_users_registry_directory_is_refused_not_trusted() -> TestResult {
    let base = tempfile::tempdir()?;
    use std::os::unix::fs::PermissionsExt;
    // A shared temporary directory, like /tmp.
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o1777))?;
    let uid = String::from_utf8_lossy(&Command::new("id").arg("-u").output()?.stdout).trim().to_string();
    let theirs = base.path().join(format!("micro-{uid}"));
    let fake = r#"{"expires_ms":0,"service":{"name":"greeter","version":"latest","metadata":{},"endpoints":[],"nodes":[{"id":"greeter-evil","address":"127.0.0.1:9","metadata":{}}]}}"#;
    let script = format!(
        "umask 000; mkdir -p {d}/registry/greeter && printf '%s' '{fake}' > {d}/registry/greeter/greeter-evil.json",
        d = theirs.display()
    );
    // The attacker: another uid (nobody), by dropping privileges in a child.
    let st = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", &script])
        .status();
    if !st.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("note: cannot act as another user here (not root?): {st:?}; skipped");
        return Ok(());
    }
    let run = |args: &[&str]| -> std::io::Result<Output> {
        Command::new(MICRO)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("MICRO_REGISTRY_ADDRESS")
            .env_remove("MICRO_PLUGIN")
            .env("TMPDIR", base.path())
            .env("MICRO_REGISTRY", "local")
            .args(args)
            .output()
    };
    for args in [&["describe", "greeter"][..], &["services"][..]] {
        let o = run(args)?;
        assert_eq!(o.status.code(), Some(1), "{args:?} must refuse the directory:\n{}{}", out(&o), err(&o));
        assert!(!out(&o).contains("greeter-evil"), "the other user's node was used: {}", out(&o));
        let e = err(&o);
        assert!(e.contains(&format!("refusing the registry directory {}/registry", theirs.display())), "{e}");
        assert!(e.contains("is owned by uid 65534, not by this user"), "{e}");
        assert!(e.contains("set --registry-address (MICRO_REGISTRY_ADDRESS) to a directory of yours"), "{e}");
    }
    // A service refuses to start there too.
    let mut svc = Command::new(bin("greeter-service"));
    svc.env_remove("XDG_RUNTIME_DIR")
        .env_remove("MICRO_REGISTRY_ADDRESS")
        .env("TMPDIR", base.path())
        .env("MICRO_REGISTRY", "local");
    let o = run_bounded(&mut svc, Duration::from_secs(30))?;
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("is owned by uid 65534"), "{}", err(&o));
    Ok(())
}

/// `greeter-service 2>&1 | head -1`: the log sink goes away after one line.
/// The service goes on logging into the closed pipe (each write dropped),
/// serves, and on SIGTERM deregisters and exits 0: it never dies of a panic.
#[test]
fn a_service_survives_its_log_pipe_closing() -> TestResult {
    let w = World::new()?;
    let mut c = Command::new(bin("greeter-service"));
    w.env(&mut c);
    c.env("MICRO_LOG_LEVEL", "debug");
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    {
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut first = String::new();
        BufReader::new(stderr).read_line(&mut first)?;
        assert!(!first.is_empty());
        assert!(!first.contains('\u{1b}'), "no colour codes into a pipe: {first:?}");
    } // the reader is gone: every later log line hits a broken pipe
    let svc = Proc(child);
    w.registered()?;
    let o = w.micro(&["call", "greeter", "Greeter.Hello", r#"{"name":"pipe"}"#])?;
    assert!(o.status.success(), "it still serves: {}", err(&o));
    let o = svc.terminate(Duration::from_secs(20))?;
    assert_eq!(o.status.code(), Some(0), "exit status after SIGTERM: {:?}", o.status);
    let t0 = Instant::now();
    loop {
        let o = w.micro(&["services", "--output", "json"])?;
        if !out(&o).contains("\"greeter\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still registered: {}", out(&o));
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The README's rule for sharing a machine: `TOKIO_WORKER_THREADS` sizes a
/// service's runtime (`micro::run_main`), and the server's start-up line
/// says how many workers it has; without it, one per core.
#[test]
fn a_service_runs_on_the_worker_threads_it_is_given() -> TestResult {
    let w = World::new()?;
    let cores = std::thread::available_parallelism()?.get();
    for (workers, want) in [(Some("1"), 1), (None, cores)] {
        let mut c = Command::new(bin("greeter-service"));
        w.env(&mut c);
        c.env("MICRO_LOG_LEVEL", "info").env_remove("TOKIO_WORKER_THREADS");
        if let Some(n) = workers {
            c.env("TOKIO_WORKER_THREADS", n);
        }
        let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let svc = Proc(child);
        // Read on a thread of its own: a service that never logs the line
        // fails the test after 20 s instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("server listening") {
                    let _ = tx.send(line);
                    return;
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).map_err(|_| "no \"server listening\" line in 20 s")?;
        let field = format!("workers={want}");
        assert!(line.split_whitespace().any(|t| t == field), "TOKIO_WORKER_THREADS={workers:?}: {line}");
        svc.terminate(Duration::from_secs(20))?;
    }
    // A value tokio cannot use is an error that says so, not a panic.
    for bad in ["0", "two"] {
        let mut c = Command::new(bin("greeter-service"));
        w.env(&mut c);
        c.env("TOKIO_WORKER_THREADS", bad);
        let o = run_bounded(&mut c, Duration::from_secs(20))?;
        assert_eq!(o.status.code(), Some(1), "TOKIO_WORKER_THREADS={bad}: {}", err(&o));
        assert!(
            err(&o).contains(&format!("error: TOKIO_WORKER_THREADS must be a whole number above 0, not {bad:?}")),
            "{}",
            err(&o)
        );
        assert!(!err(&o).contains("panicked"), "{}", err(&o));
    }
    Ok(())
}

/// `micro completion bash | head -1` and `micro call … --stream | head -1`:
/// the reader goes away; the tool exits quietly with status 0, no panic.
#[test]
fn the_tool_exits_quietly_when_its_reader_goes_away() -> TestResult {
    let w = World::new()?;
    let _svc = w.greeter()?;
    w.registered()?;
    for args in [
        &["completion", "bash"][..],
        &["call", "greeter", "Greeter.Count", r#"{"n": 10000}"#, "--stream", "--output", "json"][..],
    ] {
        let mut c = Command::new(MICRO);
        w.env(&mut c);
        let mut child = c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        {
            let stdout = child.stdout.take().ok_or("no stdout")?;
            let mut first = String::new();
            BufReader::new(stdout).read_line(&mut first)?;
            assert!(!first.is_empty(), "{args:?}");
        }
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{args:?} never exited");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut e = String::new();
        if let Some(mut s) = child.stderr.take() {
            use std::io::Read;
            s.read_to_string(&mut e)?;
        }
        assert_eq!(status.code(), Some(0), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
    Ok(())
}

/// A mucp node and a grpc node of the same service (easy to get by following
/// the README's gRPC section): each client picks only nodes that speak its
/// protocol, `micro health` asks each node in its own protocol, and a client
/// with no node of its protocol gets a 404 naming the protocols there are.
#[test]
fn clients_pick_only_nodes_that_speak_their_protocol() -> TestResult {
    let w = World::new()?;
    let _mucp = w.greeter()?;
    let mut c = Command::new(bin("greeter-service"));
    w.env(&mut c);
    let _grpc = Proc(c.args(["--server", "grpc"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    w.greeter_nodes(2)?;
    for client in ["mucp", "grpc"] {
        for i in 0..8 {
            let o = w.micro(&[
                "call",
                "greeter",
                "Greeter.Hello",
                r#"{"name":"p"}"#,
                "--client",
                client,
                "--client-retries",
                "0",
            ])?;
            assert!(o.status.success(), "--client {client}, call {i}: {}", err(&o));
        }
        let o = w.micro(&["call", "greeter", "Greeter.Count", r#"{"n": 2}"#, "--stream", "--client", client])?;
        assert!(o.status.success(), "--client {client} stream: {}", err(&o));
    }
    let o = w.micro(&["health", "greeter"])?;
    assert!(o.status.success(), "both nodes healthy, each asked in its protocol: {}{}", out(&o), err(&o));
    assert_eq!(out(&o).matches("healthy").count() - out(&o).matches("unhealthy").count(), 2, "{}", out(&o));

    // Only mucp nodes: a grpc client is told what there is.
    let w2 = World::new()?;
    let _only = w2.greeter()?;
    w2.registered()?;
    let o = w2.micro(&["call", "greeter", "Greeter.Hello", r#"{"name":"p"}"#, "--client", "grpc"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("service greeter has no node speaking grpc: its nodes speak mucp"), "{}", err(&o));
    Ok(())
}

/// `micro publish` with the in-process memory broker would reach nobody:
/// refused with what to use instead, never "published" and exit 0.
#[test]
fn publishing_into_the_memory_broker_is_refused() -> TestResult {
    let w = World::new()?;
    let mut c = Command::new(MICRO);
    w.env(&mut c);
    let o = c.args(["publish", "events", r#"{"n":1}"#, "--broker", "memory"]).output()?;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(!out(&o).contains("published"), "{}", out(&o));
    assert!(err(&o).contains("the memory broker only reaches subscribers inside this process"), "{}", err(&o));
    assert!(err(&o).contains("--broker http"), "{}", err(&o));
    Ok(())
}

/// Errors say what to do: a stream endpoint called without `--stream`, an
/// unreachable etcd, a registry address that is a file, an API address
/// without a port.
#[test]
fn errors_say_what_to_do() -> TestResult {
    let w = World::new()?;
    let _svc = w.greeter()?;
    w.registered()?;
    let o = w.micro(&["call", "greeter", "Greeter.Count", r#"{"n": 1}"#])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("add --stream to open a stream to it"), "{}", err(&o));

    let o =
        Command::new(MICRO).args(["services", "--registry", "etcd", "--registry-address", "127.0.0.1:1"]).output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("cannot reach etcd at 127.0.0.1:1: connection refused"), "{}", err(&o));
    assert!(!err(&o).contains("Status {") && !err(&o).contains("source:"), "no debug chain: {}", err(&o));

    // A service whose first registration fails stops with the registry's
    // error rather than serving where nobody can find it.
    let mut svc = Command::new(bin("greeter-service"));
    w.env(&mut svc);
    svc.args(["--registry", "etcd", "--registry-address", "127.0.0.1:1"]);
    let o = run_bounded(&mut svc, Duration::from_secs(30))?;
    assert!(!o.status.success(), "it stopped with an error");
    assert!(err(&o).contains("cannot reach etcd at 127.0.0.1:1"), "{}", err(&o));

    let file = w.dir.path().join("a-file");
    std::fs::write(&file, "x")?;
    let o = Command::new(MICRO).arg("services").arg("--registry-address").arg(&file).output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("is not a directory: set --registry-address"), "{}", err(&o));

    let o = Command::new(MICRO).args(["api", "--address", "localhost"]).output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("needs a port: HOST:PORT, e.g. 127.0.0.1:8080 or localhost:8080"), "{}", err(&o));
    Ok(())
}

/// A README sample: commands (after `$ `) and the output each should print.
struct Sample {
    name: String,
    steps: Vec<(String, Vec<String>)>,
}

/// Every block of the README marked `<!-- sample: NAME -->`.
fn readme_samples() -> Result<Vec<Sample>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(root().join("README.md"))?;
    let mut samples = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("<!-- sample:").and_then(|r| r.strip_suffix("-->")) else { continue };
        let fence = lines.next().unwrap_or_default();
        if !fence.starts_with("```") {
            return Err(format!("sample {name}: no code block after the marker").into());
        }
        let mut steps: Vec<(String, Vec<String>)> = Vec::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            match (l.strip_prefix("$ "), steps.last_mut()) {
                (Some(cmd), _) => steps.push((cmd.to_string(), Vec::new())),
                (None, Some((_, out))) => out.push(l.to_string()),
                (None, None) => return Err(format!("sample {name}: output before any command").into()),
            }
        }
        for (_, out) in &mut steps {
            while out.last().is_some_and(|l| l.trim().is_empty()) {
                out.pop();
            }
        }
        samples.push(Sample { name: name.trim().to_string(), steps });
    }
    Ok(samples)
}

/// A line as compared: its words, with node uuids and loopback ports that
/// differ from run to run replaced (column widths follow from them).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace()
        .map(|w| {
            let mut w = w.to_string();
            if let Some(i) = w.find("127.0.0.1:") {
                let (head, tail) = w.split_at(i + "127.0.0.1:".len());
                let rest: String = tail.trim_start_matches(|c: char| c.is_ascii_digit()).to_string();
                w = format!("{head}PORT{rest}");
            }
            // A uuid: 8-4-4-4-12 hex digits.
            let b = w.as_bytes();
            let shape = [8, 4, 4, 4, 12];
            for start in 0..b.len() {
                let mut at = start;
                let ok = shape.iter().enumerate().all(|(k, n)| {
                    let hex = b.get(at..at + n).is_some_and(|s| s.iter().all(u8::is_ascii_hexdigit));
                    at += n;
                    let dash = k == 4 || b.get(at) == Some(&b'-');
                    at += usize::from(k < 4);
                    hex && dash
                });
                if ok {
                    w = format!("{}UUID{}", &w[..start], &w[at..]);
                    break;
                }
            }
            w
        })
        .collect()
}

/// Whether an actual line matches an expected one: the same words, where an
/// expected word `…/rest` matches any word ending in `/rest`.
fn line_matches(expected: &str, actual: &str) -> bool {
    let (e, a) = (words(expected), words(actual));
    e.len() == a.len()
        && e.iter().zip(&a).all(|(e, a)| e == a || e.strip_prefix('…').is_some_and(|rest| a.ends_with(rest)))
}

/// Whether the actual output matches the expected lines; a line `…` stands
/// for any number of lines.
fn output_matches(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.iter().all(|l| l.trim().is_empty()),
        Some((e, rest)) if e.trim() == "…" => (0..=actual.len()).any(|skip| output_matches(rest, &actual[skip..])),
        Some((e, rest)) => {
            actual.split_first().is_some_and(|(a, more)| line_matches(e, a) && output_matches(rest, more))
        }
    }
}

/// The README's samples are what the tool prints: each marked block's
/// commands run against a greeter (with `MICRO_BROKER=http`, as the README
/// says) and the brpc plugin, and their output is compared line by line;
/// the plugin ABI version in the error table is the host's.
#[test]
fn readme_samples_are_what_the_tool_prints() -> TestResult {
    let samples = readme_samples()?;
    let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for want in ["services", "call", "stream", "health", "inspect"] {
        assert!(names.contains(&want), "the README has the {want} sample: {names:?}");
    }
    let w = World::new()?;
    let _svc = w.greeter()?;
    w.registered()?;
    // The services sample lists the http broker's record too.
    let t0 = Instant::now();
    while !out(&w.micro(&["services"])?).contains("micro.http.broker") {
        if t0.elapsed() > Duration::from_secs(20) {
            return Err("the http broker never registered".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cwd = w.dir.path().join("samples");
    std::fs::create_dir_all(&cwd)?;
    std::fs::copy(example_plugin("brpc", "client", "new_client"), cwd.join("brpc.so"))?;
    let bin_dir = std::path::Path::new(MICRO).parent().ok_or("bin dir")?;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for sample in &samples {
        let mut last = 0;
        for (cmd, expected) in &sample.steps {
            let (text, code) = if cmd.trim() == "echo $?" {
                (format!("{last}\n"), 0)
            } else {
                let mut c = Command::new("sh");
                w.env(&mut c);
                let o = c.current_dir(&cwd).env("PATH", &path).args(["-c", &format!("{cmd} 2>&1")]).output()?;
                (out(&o), o.status.code().unwrap_or(-1))
            };
            last = code;
            let actual: Vec<&str> = text.lines().collect();
            assert!(
                output_matches(expected, &actual),
                "README sample {}: `{cmd}` printed\n{text}\nbut the README says\n{}",
                sample.name,
                expected.join("\n")
            );
        }
    }
    // The error table's ABI mismatch row names the host's ABI version.
    let o = w.micro(&["plugin", "inspect", cwd.join("brpc.so").to_str().ok_or("path")?, "--output", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let abi = v["host"]["abi_version"].as_u64().ok_or("host abi_version")?;
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    let row =
        readme.lines().find(|l| l.contains("plugin ABI version mismatch: plugin has")).ok_or("no ABI error row")?;
    // The probe plugin of that row declares the host's version + 998 (tests/plugin-probe).
    let theirs = abi + 998;
    assert!(
        row.contains(&format!("plugin has {theirs}, host has {abi}:")),
        "the README's error table names ABI {abi} and the probe's {theirs}: {row}"
    );
    Ok(())
}

#[test]
fn readme_sample_matching_is_strict_where_it_should_be() {
    let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(line_matches(
        "greeter-98f1687f-f40d-40e1-95dc-afd2d17afe44  127.0.0.1:33467  healthy",
        "greeter-da0b9ea1-e45a-4ebd-90fd-47fc60a0b777     127.0.0.1:1  healthy"
    ));
    assert!(!line_matches("greeter 127.0.0.1:1 healthy", "greeter 127.0.0.1:1 unhealthy"));
    assert!(line_matches("File: …/brpc.so", "File: /tmp/x/brpc.so"));
    assert!(!line_matches("File: …/brpc.so", "File: /tmp/x/tcpx.so"));
    assert!(output_matches(&e(&["a", "…", "z"]), &["a", "b", "c", "z"]));
    assert!(output_matches(&e(&["a", "…", "z"]), &["a", "z"]));
    assert!(!output_matches(&e(&["a", "z"]), &["a", "b", "z"]));
    assert!(!output_matches(&e(&["a"]), &["a", "extra"]));
}

/// A service generated from a .proto (examples/proto-greeter, micro-build):
/// `micro describe` shows each endpoint's request and response fields as
/// go-micro's `micro get service` does (nested messages, repeated fields,
/// enums, stream metadata), and `micro call` reaches it in JSON, a stream too.
#[test]
fn a_generated_service_is_described_field_by_field_and_called_in_json() -> TestResult {
    let w = World::new()?;
    let mut c = Command::new(bin("generated-greeter"));
    w.env(&mut c);
    let _svc = Proc(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    w.registered()?;
    let o = w.micro(&["describe", "greeter"])?;
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    let hello = "Endpoint: Greeter.Hello\n\nRequest: {\n\tname string\n\tmood Mood\n\taddress Address {\n\t\tcity string\n\t\tcountry string\n\t}\n\tnicknames []string\n}\n\nResponse: {\n\tgreeting string\n}\n";
    assert!(text.contains(hello), "{text}");
    assert!(text.contains("Endpoint: Greeter.Count\nMetadata: stream=true\n\nRequest: {\n\tn uint32\n}"), "{text}");
    assert!(text.contains("Endpoint: Greeter.Sum\nMetadata: stream=true\n\nRequest: {\n\tvalue int64\n}\n\nResponse: {\n\ttotal int64\n\tcount uint32\n}"), "{text}");

    let o = w.micro(&[
        "call",
        "greeter",
        "Greeter.Hello",
        r#"{"name": "Json", "address": {"city": "Oslo"}}"#,
        "--output",
        "json",
    ])?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), r#"{"greeting":"Hello Json from Oslo"}"#);
    let o = w.micro(&["call", "greeter", "Greeter.Count", r#"{"n": 2}"#, "--stream", "--output", "json"])?;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "{\"i\":1}\n{\"i\":2}\n");
    Ok(())
}

/// `MICRO_CLIENT_CONNECTIONS` sets how many connections a client opens to
/// each node (counted by micro-testkit's proxy, which the greeter
/// advertises): 3 when it says 3, 1 when it says 1, for the same 12 calls.
#[test]
fn micro_client_connections_sets_the_connections_per_node() -> TestResult {
    let w = World::new()?;
    let port = micro_testkit::free_port().map_err(|e| e.to_string())?;
    let upstream = format!("127.0.0.1:{port}");
    let proxy = micro_testkit::proxy::Proxy::start("127.0.0.1:0", &upstream).map_err(|e| e.to_string())?;
    let mut c = Command::new(bin("greeter-service"));
    w.env(&mut c);
    c.args(["--server-address", &upstream, "--server-advertise", proxy.addr()]);
    let _svc = Proc(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    w.registered()?;
    for n in [3, 1] {
        let before = proxy.accepted();
        let mut client = Command::new(bin("greeter-client"));
        w.env(&mut client);
        client.args(["--count", "12"]).env("MICRO_CLIENT_CONNECTIONS", n.to_string());
        let o = run_bounded(&mut client, Duration::from_secs(30))?;
        assert!(o.status.success(), "{}", err(&o));
        assert_eq!(out(&o).lines().count(), 12);
        assert_eq!(proxy.accepted() - before, n, "MICRO_CLIENT_CONNECTIONS={n}");
    }
    Ok(())
}

/// `--broker-advertise`: the HTTP broker's subscriber registers the address
/// it is told (here micro-testkit's proxy in front of it), and a publisher
/// delivers there.
#[test]
fn the_http_broker_registers_its_advertised_address() -> TestResult {
    let w = World::new()?;
    let port = micro_testkit::free_port().map_err(|e| e.to_string())?;
    let listen = format!("127.0.0.1:{port}");
    let proxy = micro_testkit::proxy::Proxy::start("127.0.0.1:0", &listen).map_err(|e| e.to_string())?;
    let mut c = Command::new(MICRO);
    w.env(&mut c);
    c.args(["subscribe", "advertised.events", "--count", "1", "--output", "json"]).args([
        "--broker-address",
        &listen,
        "--broker-advertise",
        proxy.addr(),
    ]);
    let sub = Proc(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?);
    let t0 = Instant::now();
    loop {
        let o = w.micro(&["describe", "micro.http.broker", "--output", "json"])?;
        if out(&o).contains(&format!("\"address\": \"{}\"", proxy.addr())) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!("the subscriber never registered {}: {}", proxy.addr(), out(&o)).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = w.micro(&["publish", "advertised.events", r#"{"via": "proxy"}"#])?;
    assert!(o.status.success(), "{}", err(&o));
    let got = sub.output(Duration::from_secs(20))?;
    assert!(String::from_utf8_lossy(&got.stdout).contains(r#""via":"proxy""#), "{}", out(&got));
    assert!(proxy.accepted() >= 1, "the publisher delivered through the advertised address");
    Ok(())
}
