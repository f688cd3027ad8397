//! Real processes discovering each other through the default (`local`)
//! registry: each test gets its own registry directory.

use micro::core::Registry;
use micro::registry::LocalRegistry;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SERVICE: &str = env!("CARGO_BIN_EXE_greeter-service");
const CLIENT: &str = env!("CARGO_BIN_EXE_greeter-client");

use micro_testkit::{without_micro_env, Proc};

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Result<Self, std::io::Error> {
        Ok(World { dir: tempfile::tempdir()? })
    }

    fn env(&self, cmd: &mut Command) {
        without_micro_env(cmd)
            .env("MICRO_REGISTRY", "local")
            .env("MICRO_REGISTRY_ADDRESS", self.dir.path())
            .env("MICRO_LOG_LEVEL", "warn");
    }

    fn service(&self, args: &[&str]) -> Result<Proc, std::io::Error> {
        let mut cmd = Command::new(SERVICE);
        self.env(&mut cmd);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        Ok(Proc(cmd.spawn()?))
    }

    /// A service whose log (greeter's own at debug) is read line by line:
    /// each line is sent on the returned channel.
    fn service_logging(&self) -> Result<(Proc, std::sync::mpsc::Receiver<String>), std::io::Error> {
        use std::io::BufRead;
        let mut cmd = Command::new(SERVICE);
        self.env(&mut cmd);
        cmd.env("MICRO_LOG_LEVEL", "warn,greeter=debug").env("NO_COLOR", "1");
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| std::io::Error::other("no stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok((Proc(child), rx))
    }

    fn client(&self, args: &[&str]) -> Result<Output, std::io::Error> {
        let mut cmd = Command::new(CLIENT);
        self.env(&mut cmd);
        cmd.args(args).output()
    }

    fn registry(&self) -> Result<LocalRegistry, micro::core::Error> {
        LocalRegistry::new(self.dir.path())
    }

    /// Polls the registry until `greeter` has `n` nodes, at most `limit`.
    async fn wait_nodes(&self, n: usize, limit: Duration) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        Ok(micro_testkit::wait::nodes(&self.registry()?, "greeter", n, limit).await.map_err(|e| e.to_string())?)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn a_client_process_calls_a_service_process() -> TestResult {
    let w = World::new()?;
    let _svc = w.service(&[])?;
    w.wait_nodes(1, Duration::from_secs(20)).await?;
    let out = w.client(&["--name", "Alice"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), "Hello Alice\n");

    // An application error exits non-zero with go-micro's error JSON.
    let out = w.client(&["--name", " "])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"{"id":"greeter","code":400,"detail":"name must not be empty","status":"Bad Request"}"#),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn calls_spread_over_two_service_processes() -> TestResult {
    let w = World::new()?;
    let _a = w.service(&[])?;
    let _b = w.service(&[])?;
    let mut ids = w.wait_nodes(2, Duration::from_secs(20)).await?;
    let out = w.client(&["--whoami", "--count", "10", "--selector", "roundrobin"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut seen: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(seen.len(), 10);
    seen.sort();
    seen.dedup();
    ids.sort();
    assert_eq!(seen, ids, "round robin over both nodes");
    Ok(())
}

#[tokio::test]
async fn sigterm_deregisters_at_once() -> TestResult {
    let w = World::new()?;
    let mut svc = w.service(&["--register-ttl", "60"])?;
    w.wait_nodes(1, Duration::from_secs(20)).await?;
    svc.signal("TERM")?;
    let st = svc.wait_exit(Duration::from_secs(15))?;
    assert!(st.success(), "clean exit after SIGTERM: {st}");
    // Gone now, not after the 60s TTL.
    let e = w.registry()?.get_service("greeter").await.err();
    assert_eq!(e.map(|e| e.code), Some(404));
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_call_finish() -> TestResult {
    let w = World::new()?;
    let (mut svc, log) = w.service_logging()?;
    let ids = w.wait_nodes(1, Duration::from_secs(20)).await?;
    let node = w.registry()?.get_service("greeter").await?[0].nodes[0].address.clone();
    assert!(!ids.is_empty());
    // Call Greeter.Sleep directly from this process, then SIGTERM mid-call.
    let caller = micro::Service::builder("t")
        .flags(micro::Flags { registry: Some("memory".into()), ..Default::default() })
        .build()?;
    let client = caller.client().clone();
    let call = tokio::spawn(async move {
        let opts = micro::core::CallOptions { address: Some(node), ..Default::default() };
        client
            .call_with::<_, greeter::HelloResponse>(
                "greeter",
                "Greeter.Sleep",
                &greeter::SleepRequest { ms: 800 },
                Default::default(),
                opts,
            )
            .await
    });
    // SIGTERM once the handler says it is running, not after a guessed delay.
    let started = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            match log.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("Greeter.Sleep started") => return true,
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
        false
    })
    .await?;
    assert!(started, "the service never logged that Greeter.Sleep started");
    svc.signal("TERM")?;
    let got = call.await?;
    assert_eq!(got.map(|r| r.greeting), Ok("slept 800ms".to_string()));
    assert!(svc.wait_exit(Duration::from_secs(15))?.success());
    Ok(())
}

#[tokio::test]
async fn a_node_that_stops_heart_beating_expires_after_its_ttl() -> TestResult {
    let w = World::new()?;
    let mut svc = w.service(&["--register-ttl", "2", "--register-interval", "1"])?;
    w.wait_nodes(1, Duration::from_secs(20)).await?;
    // Heart-beats keep it alive past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.wait_nodes(1, Duration::from_secs(1)).await?;
    // SIGKILL: no deregistration, so only the TTL removes it.
    svc.0.kill()?;
    svc.wait_exit(Duration::from_secs(5))?;
    let t0 = Instant::now();
    w.wait_nodes(0, Duration::from_secs(10)).await?;
    assert!(t0.elapsed() <= Duration::from_secs(3), "expired {:?} after the kill", t0.elapsed());
    Ok(())
}

#[test]
fn unknown_component_name_fails_start_up_listing_the_names() -> TestResult {
    let w = World::new()?;
    for (flag, value, want) in [
        ("--client", "brpc", r#"unknown client "brpc"; available: grpc, mucp"#),
        ("--registry", "consul", r#"unknown registry "consul"; available: etcd, local, mdns, memory"#),
        ("--selector", "fastest", r#"unknown selector "fastest"; available: random, roundrobin"#),
    ] {
        let mut cmd = Command::new(SERVICE);
        w.env(&mut cmd);
        let out = cmd.args([flag, value]).output()?;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
    // The environment fallback picks components too.
    let mut cmd = Command::new(SERVICE);
    w.env(&mut cmd);
    let out = cmd.env("MICRO_TRANSPORT", "quic").output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"unknown transport "quic"; available: tcp"#));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_costs_no_failed_call() -> TestResult {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let w = World::new()?;
    let mut nodes = vec![w.service(&[])?, w.service(&[])?, w.service(&[])?];
    let ids = w.wait_nodes(3, Duration::from_secs(20)).await?;
    let caller = micro::Service::builder("load")
        .flags(micro::Flags {
            registry: Some("local".into()),
            registry_address: Some(w.dir.path().display().to_string()),
            ..Default::default()
        })
        .build()?;
    // Which node serves which call, in order.
    let done = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(std::sync::Mutex::new(Vec::with_capacity(10_000)));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, done, answers) = (caller.client().clone(), done.clone(), answers.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while done.fetch_add(1, Ordering::SeqCst) < 10_000 {
                match client
                    .call::<_, greeter::WhoamiResponse>("greeter", "Greeter.Whoami", &serde_json::json!({}))
                    .await
                {
                    Ok(r) => answers.lock().unwrap_or_else(|e| e.into_inner()).push(r.id),
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }
    // SIGKILL one node once a fifth of the calls are done.
    while done.load(Ordering::SeqCst) < 2_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let victim = nodes.remove(0);
    let mut victim = victim;
    victim.0.kill()?;
    victim.wait_exit(Duration::from_secs(5))?;
    let killed_at = answers.lock().unwrap_or_else(|e| e.into_inner()).len();
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await?);
    }
    assert!(failures.is_empty(), "{} failed calls, first: {}", failures.len(), failures[0]);
    let answers = answers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(answers.len(), 10_000);
    // The dead node (whichever it was) stops answering soon after the kill;
    // the last half of the calls are served by the two survivors only.
    let late: std::collections::HashSet<&String> = answers[killed_at.max(5_000)..].iter().collect();
    assert_eq!(late.len(), 2, "the dead node left the rotation: {late:?}");
    assert!(late.iter().all(|id| ids.contains(id)));
    drop(nodes);
    Ok(())
}
