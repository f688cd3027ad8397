//! micro's `grpc` components against standard gRPC peers that know nothing
//! of micro: a Python `grpcio` client (stubs generated from
//! `proto/greeter.proto` by `grpc_tools`, installed from PyPI into a venv
//! under the target directory on first use), tonic's generated client, and a
//! plain tonic server. Loopback only; every wait is bounded.

use grpc_interop::pb::{self, CountReply, CountRequest, HelloReply, HelloRequest, SlowRequest};
use grpc_interop::{serve_micro, serve_plain, Abandoned};
use micro::codec::Proto;
use micro::core::CallOptions;
use micro::{Flags, Service, TypedStream};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The Python packages, pinned so that the test is repeatable.
const PY_PACKAGES: [&str; 3] = ["grpcio==1.85.3", "grpcio-tools==1.85.1", "grpcio-health-checking==1.85.1"];

/// A Python with grpcio, made once per target directory.
fn python() -> Result<PathBuf, String> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-interop-venv");
        let py = venv.join("bin/python");
        let ready = |py: &Path| {
            Command::new(py)
                .args(["-c", "import grpc, grpc_tools, grpc_health"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if ready(&py) {
            return Ok(py);
        }
        eprintln!("creating a Python venv with {} in {}", PY_PACKAGES.join(" "), venv.display());
        let ok = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .map_err(|e| format!("python3 -m venv: {e} (install python3 and python3-venv)"))?;
        if !ok.success() {
            return Err(format!("python3 -m venv {} failed", venv.display()));
        }
        let ok = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(PY_PACKAGES)
            .status()
            .map_err(|e| format!("pip install: {e}"))?;
        if !ok.success() || !ready(&py) {
            return Err(format!("pip install {} failed", PY_PACKAGES.join(" ")));
        }
        Ok(py)
    })
    .clone()
}

fn flags(world: &str) -> Flags {
    Flags { server: Some("grpc".into()), client: Some("grpc".into()), client_retries: Some(0), ..Flags::memory(world) }
}

/// A micro greeter on the `grpc` server; its address and abandoned-call count.
async fn micro_greeter(world: &str, extra: Flags) -> Result<(Service, String, Abandoned), Box<dyn std::error::Error>> {
    let f = Flags {
        transport_tls_cert: extra.transport_tls_cert,
        transport_tls_key: extra.transport_tls_key,
        ..flags(world)
    };
    let svc = Service::builder("greeter").flags(f).build()?;
    let abandoned = serve_micro(&svc)?;
    svc.start().await?;
    let addr = svc.server().service().nodes[0].address.clone();
    Ok((svc, addr, abandoned))
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) -> TestResult {
    Ok(micro_testkit::wait::until(what, Duration::from_secs(5), f).await.map_err(|e| e.to_string())?)
}

/// Python stubs of `proto/greeter.proto` (in `proto`), made by grpc_tools
/// in a directory of their own (for `PYTHONPATH`).
fn python_stubs(py: &Path, proto: &Path) -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
    let stubs = tempfile::tempdir()?;
    let ok = Command::new(py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(proto)
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(proto.join("greeter.proto"))
        .status()?;
    if !ok.success() {
        return Err(format!("grpc_tools.protoc failed on {}", proto.display()).into());
    }
    Ok(stubs)
}

/// Runs `py/client.py` against `addr` (over TLS when `ca` is given) and
/// returns its checks, one JSON object each.
async fn run_python_client(
    addr: &str,
    ca: Option<&Path>,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let py = python()?;
    let stubs = python_stubs(&py, &Path::new(env!("CARGO_MANIFEST_DIR")).join("proto"))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/client.py");
    let mut cmd = tokio::process::Command::new(&py);
    cmd.arg(script).arg(addr).env("PYTHONPATH", stubs.path()).kill_on_drop(true);
    if let Some(ca) = ca {
        cmd.arg(ca);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("client.py failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
}

/// Asserts what `py/client.py` reported against the micro greeter.
async fn assert_python_checks(checks: &[serde_json::Value], abandoned: &Abandoned) -> TestResult {
    let check = |name: &str| checks.iter().filter(|c| c["check"] == name).cloned().collect::<Vec<_>>();
    assert_eq!(check("unary")[0]["greeting"], "Hello Python (from grpcio)", "metadata reached the handler");
    assert_eq!(check("server_stream")[0]["counts"], serde_json::json!([1, 2, 3, 4, 5]));
    let err = &check("error")[0];
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    assert!(err["details"].as_str().unwrap_or("").contains("name must not be empty"), "{err}");
    assert_eq!(check("deadline")[0]["code"], "DEADLINE_EXCEEDED");
    // The slow handler was stopped, not run to its end.
    eventually("the slow call was abandoned", || abandoned.get() == 1).await?;
    let health = check("health");
    assert_eq!(health.len(), 2);
    assert!(health.iter().all(|h| h["status"] == "SERVING"), "{health:?}");
    assert_eq!(check("health_unknown")[0]["code"], "NOT_FOUND");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_a_micro_grpc_service() -> TestResult {
    let (svc, addr, abandoned) = micro_greeter("interop-python", Flags::default()).await?;
    let checks = run_python_client(&addr, None).await?;
    assert_python_checks(&checks, &abandoned).await?;
    svc.stop().await?;
    Ok(())
}

/// The same over TLS: the server takes `--transport-tls-cert/-key`, grpcio
/// verifies it against the CA (ALPN h2, as gRPC requires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_a_micro_grpc_service_over_tls() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = micro_testkit::certs::Ca::new("interop CA")?;
    let ca_pem = ca.write(dir.path(), "ca.pem")?;
    let leaf = ca.leaf(dir.path(), "s", micro_testkit::certs::Usage::Any)?;
    let (cert_pem, key_pem) = (leaf.cert, leaf.key);
    let tls = Flags {
        transport_tls_cert: Some(cert_pem.display().to_string()),
        transport_tls_key: Some(key_pem.display().to_string()),
        ..Flags::default()
    };
    let (svc, addr, abandoned) = micro_greeter("interop-python-tls", tls).await?;
    let checks = run_python_client(&addr, Some(&ca_pem)).await?;
    assert_python_checks(&checks, &abandoned).await?;
    // Without TLS the client cannot get through.
    let plain =
        run_python_client(&addr, None).await.err().ok_or("a plain-text client got answers from a TLS server")?;
    assert!(plain.to_string().contains("client.py failed"), "the client itself failed, not the harness: {plain}");
    svc.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_generated_client_calls_a_micro_grpc_service() -> TestResult {
    let (svc, addr, _) = micro_greeter("interop-tonic-client", Flags::default()).await?;
    let mut client = pb::greeter_client::GreeterClient::connect(format!("http://{addr}")).await?;

    let mut req = tonic::Request::new(HelloRequest { name: "tonic".into() });
    req.metadata_mut().insert("x-caller", "generated".parse()?);
    assert_eq!(client.hello(req).await?.into_inner().greeting, "Hello tonic (from generated)");

    let mut counts = client.count(CountRequest { n: 3 }).await?.into_inner();
    let mut got = Vec::new();
    while let Some(r) = counts.message().await? {
        got.push(r.i);
    }
    assert_eq!(got, vec![1, 2, 3]);

    let status = client.hello(HelloRequest { name: String::new() }).await.err().ok_or("empty name accepted")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("name must not be empty"), "{status:?}");

    // An unknown method is Unimplemented, as gRPC clients expect.
    let mut raw =
        tonic::client::Grpc::new(tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect().await?);
    raw.ready().await?;
    let status = raw
        .unary::<HelloRequest, HelloReply, _>(
            tonic::Request::new(HelloRequest::default()),
            "/greeter.Greeter/Missing".parse()?,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .err()
        .ok_or("an unknown method answered")?;
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    svc.stop().await?;
    Ok(())
}

/// The server enforces `grpc-timeout` itself: a bare HTTP/2 request (hyper,
/// no gRPC library, so nothing on the client side enforces the deadline)
/// gets `grpc-status: 4` (DEADLINE_EXCEEDED) when the deadline passes, and
/// the handler is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_enforces_grpc_timeout() -> TestResult {
    use http_body_util::BodyExt;
    use prost::Message;
    let (svc, addr, abandoned) = micro_greeter("interop-deadline", Flags::default()).await?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let msg = SlowRequest { ms: 3000 }.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let req = http::Request::post(format!("http://{addr}/greeter.Greeter/Slow"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "200m")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let t0 = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await??;
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(5), body.collect()).await??;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = parts.headers.get("grpc-status").or_else(|| trailers.get("grpc-status")).cloned();
    assert_eq!(status.as_ref().and_then(|v| v.to_str().ok()), Some("4"), "{parts:?} {trailers:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "answered after {:?}", t0.elapsed());
    eventually("the slow call was abandoned", || abandoned.get() == 1).await?;
    svc.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micro_grpc_client_calls_a_plain_tonic_server() -> TestResult {
    let addr = serve_plain().await?;
    let caller = Service::builder("caller").flags(flags("interop-plain")).build()?;
    // Protobuf, as the plain server speaks it; the service name is the proto package.
    let client = caller.client().clone().with_content_type("application/grpc");
    let at = || CallOptions { address: Some(addr.clone()), ..Default::default() };
    let md = HashMap::from([("x-caller".to_string(), "micro".to_string())]);

    let Proto(reply): Proto<HelloReply> =
        client.call_with("greeter", "Greeter.Hello", &Proto(HelloRequest { name: "Micro".into() }), md, at()).await?;
    assert_eq!(reply.greeting, "Hi Micro (from micro)");

    let err = client
        .call_with::<_, Proto<HelloReply>>(
            "greeter",
            "Greeter.Hello",
            &Proto(HelloRequest { name: "nobody".into() }),
            HashMap::new(),
            at(),
        )
        .await
        .err()
        .ok_or("nobody was greeted")?;
    assert_eq!((err.code, err.detail.as_str()), (404, "no such person: nobody"), "{err}");

    let mut s: TypedStream<Proto<CountRequest>, Proto<CountReply>> =
        client.stream_with("greeter", "Greeter.Count", HashMap::new(), at()).await?;
    s.send(&Proto(CountRequest { n: 4 })).await?;
    s.close_send();
    let mut got = Vec::new();
    while let Some(Proto(r)) = tokio::time::timeout(Duration::from_secs(10), s.recv()).await?? {
        got.push(r.i);
    }
    assert_eq!(got, vec![1, 2, 3, 4]);

    let t0 = Instant::now();
    let opts = CallOptions { timeout: Some(Duration::from_millis(300)), ..at() };
    let err = client
        .call_with::<_, Proto<HelloReply>>(
            "greeter",
            "Greeter.Slow",
            &Proto(SlowRequest { ms: 3000 }),
            HashMap::new(),
            opts,
        )
        .await
        .err()
        .ok_or("the slow call beat its deadline")?;
    assert_eq!(err.code, 408, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    Ok(())
}

/// The standard health service with a standard client (tonic-health's):
/// SERVING while the service runs; `Watch` streams the status, and on stop
/// it turns NOT_SERVING (a load balancer stops sending calls) before the
/// server drains and goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_on_stop_and_watch_follows() -> TestResult {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let (svc, addr, _abandoned) = micro_greeter("interop-health", Flags::default()).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut health = HealthClient::new(channel);
    for name in ["", "greeter"] {
        let r = health.check(HealthCheckRequest { service: name.into() }).await?.into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{name:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "nobody".into() }).await.err();
    assert_eq!(unknown.map(|s| s.code()), Some(tonic::Code::NotFound));
    let mut watch = health.watch(HealthCheckRequest { service: "greeter".into() }).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message()).await??.ok_or("the watch ended")?;
    assert_eq!(first.status(), ServingStatus::Serving);
    let stopping = tokio::spawn(async move { svc.stop().await });
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await??.ok_or("the watch ended")?;
    assert_eq!(next.status(), ServingStatus::NotServing, "the watch hears the stop");
    // The watcher goes away; the server's drain then completes.
    drop(watch);
    drop(health);
    tokio::time::timeout(Duration::from_secs(15), stopping).await???;
    Ok(())
}

/// A grpcio client generated from examples/proto-greeter's greeter.proto
/// calls the service micro-build generated from the same file (served on
/// micro's grpc server): unary with a nested message and an enum, server,
/// client and bidirectional streams, and the handler's error as a status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_calls_a_service_generated_by_micro_build() -> TestResult {
    let world = format!("proto-greeter-py-{}", std::process::id());
    let svc = proto_greeter::service(flags(&world))?;
    svc.start().await?;
    let addr = svc.server().service().nodes[0].address.clone();
    let py = python()?;
    let stubs = python_stubs(&py, &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/proto-greeter/proto"))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/proto_greeter_client.py");
    let mut cmd = tokio::process::Command::new(&py);
    cmd.arg(script).arg(&addr).env("PYTHONPATH", stubs.path()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the grpcio client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let checks: Vec<serde_json::Value> = stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let check = |name: &str| checks.iter().find(|c| c["check"] == name).cloned().unwrap_or_default();
    assert_eq!(check("unary")["greeting"], "Hello Python from Lisbon");
    assert_eq!(check("server_stream")["counts"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(
        (check("client_stream")["total"].clone(), check("client_stream")["count"].clone()),
        (42.into(), 2.into())
    );
    assert_eq!(check("bidi")["greetings"], serde_json::json!(["Hello a", "Hello b", "Hello c"]));
    assert_eq!(check("error")["code"], "INVALID_ARGUMENT");
    assert!(check("error")["details"].as_str().unwrap_or_default().contains("name must not be empty"));
    svc.stop().await?;
    Ok(())
}
