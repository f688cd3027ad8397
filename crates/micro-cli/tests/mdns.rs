//! Tests in private network namespaces (micro-testkit's NetNs): the mdns
//! registry between real processes (multicast must not leave this machine:
//! the only interface is a loopback with multicast on), and what a service
//! bound to all interfaces registers.

mod common;

use common::*;
use micro_testkit::NetNs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn in_ns(ns: &NetNs, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = ns.command(program);
    without_micro_env(&mut c).env("MICRO_REGISTRY", "mdns").env("MICRO_LOG_LEVEL", "warn");
    c
}

#[test]
fn services_find_each_other_over_mdns() -> TestResult {
    let ns = NetNs::create().map_err(|e| e.to_string())?;
    let mut a = Proc(in_ns(&ns, bin("greeter-service")).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    let _b = Proc(in_ns(&ns, bin("greeter-service")).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);

    // Another process, with its own mDNS daemon, discovers both.
    let t0 = Instant::now();
    let ids = loop {
        let o = in_ns(&ns, MICRO).args(["describe", "greeter", "--output", "json"]).output()?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let ids: Vec<String> = v[0]["nodes"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["id"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        if ids.len() == 2 {
            assert_eq!(v[0]["nodes"][0]["metadata"]["registry"], "mdns");
            assert!(v[0]["endpoints"].as_array().is_some_and(|e| e.iter().any(|e| e["name"] == "Greeter.Hello")));
            break ids;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!("found {} nodes over mDNS: {}", ids.len(), String::from_utf8_lossy(&o.stderr)).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    // And calls them. A fresh client process may call before mDNS has
    // brought it the second node (its first lookup hears the answers of its
    // settling time; on a loaded machine one can come later, and is then
    // added by the registry's watch, after these 8 quick calls), so a run
    // that reached only one is tried again, at most 5 runs, as in the hosts
    // test; one run on its own must reach both.
    let mut ids = ids;
    ids.sort();
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..5 {
        let o = in_ns(&ns, bin("greeter-client"))
            .args(["--whoami", "--count", "8", "--selector", "roundrobin", "--wait", "10s"])
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        seen = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
        seen.sort();
        seen.dedup();
        if seen == ids {
            break;
        }
    }
    assert_eq!(seen, ids);

    // A node killed without deregistering (SIGKILL, no goodbye packets) no
    // longer answers: new lookups find only the live one, and calls go there.
    a.0.kill()?;
    a.wait_exit(Duration::from_secs(5))?;
    let t0 = Instant::now();
    let left = loop {
        let o = in_ns(&ns, MICRO).args(["describe", "greeter", "--output", "json"]).output()?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let now: Vec<String> = v[0]["nodes"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["id"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        if now.len() == 1 {
            break now;
        }
        if t0.elapsed() > Duration::from_secs(6) {
            return Err(format!("{} nodes over mDNS 6 s after one was killed", now.len()).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(ids.contains(&left[0]), "{left:?} is one of {ids:?}");
    let o = in_ns(&ns, bin("greeter-client")).args(["--whoami", "--count", "4", "--wait", "10s"]).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).lines().all(|l| l == left[0]), "only the live node answers");
    Ok(())
}

/// A service bound to all interfaces (`0.0.0.0:0`) registers an address
/// others can dial — the host's private IPv4, not `0.0.0.0` — and so does
/// the HTTP broker's subscriber listener; a client calls it there and a
/// publish reaches it. In a namespace whose only routable address is
/// 10.99.0.1 (a veth pair inside it: nothing leaves the namespace).
#[test]
fn a_service_bound_to_all_interfaces_registers_a_routable_address() -> TestResult {
    let ns = NetNs::create().map_err(|e| e.to_string())?;
    ns.add_address("10.99.0.1/24").map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir()?;
    let env = |c: &mut Command| {
        without_micro_env(c)
            .env("MICRO_REGISTRY", "local")
            .env("MICRO_REGISTRY_ADDRESS", dir.path())
            .env("MICRO_BROKER", "http")
            .env("MICRO_LOG_LEVEL", "warn");
    };
    let mut svc = ns.command(bin("greeter-service"));
    env(&mut svc);
    let _svc = Proc(
        svc.args(["--server-address", "0.0.0.0:0", "--broker-address", "0.0.0.0:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let describe = |service: &str| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let mut c = ns.command(MICRO);
        env(&mut c);
        let o = c.args(["describe", service, "--output", "json"]).output()?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["nodes"].as_array().into_iter().flatten())
            .filter_map(|n| n["address"].as_str().map(String::from))
            .collect())
    };
    let t0 = Instant::now();
    let (server, broker) = loop {
        let (s, b) = (describe("greeter")?, describe("micro.http.broker")?);
        if !s.is_empty() && !b.is_empty() {
            break (s, b);
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!("not registered: greeter {s:?}, broker {b:?}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(server.iter().all(|a| a.starts_with("10.99.0.1:")), "the server registered {server:?}");
    assert!(broker.iter().all(|a| a.starts_with("10.99.0.1:")), "the broker registered {broker:?}");
    // Dialled there: a call answers, and a publish reaches the subscriber
    // (the HTTP broker's publish fails naming any subscriber it cannot reach).
    let mut client = ns.command(bin("greeter-client"));
    env(&mut client);
    let o = client.args(["--name", "Net", "--wait", "10s"]).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "Hello Net");
    let mut publish = ns.command(MICRO);
    env(&mut publish);
    let o = publish.args(["publish", "greeter.events", r#"{"id": 1}"#]).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Ok(())
}

/// The registry contract every registry meets (micro-testkit's), run
/// against the mdns registry in process, inside a namespace: a lookup right
/// after registering finds the node, a watch hears creates, a node that
/// stops renewing expires after its TTL and watchers hear it (no lookup
/// needed: the browser sweeps), deregistering is heard and is a 404.
#[test]
fn the_mdns_registry_meets_the_registry_contract() -> TestResult {
    let ns = NetNs::create().map_err(|e| e.to_string())?;
    let verdict = ns
        .run(|| -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let new = micro::catalog::builtin().registries.get("mdns").map_err(|e| e.to_string())?;
                let reg = new(micro::core::RegistryOptions::default()).map_err(|e| e.to_string())?;
                micro_testkit::contract::registry(&*reg, "contract", Duration::from_secs(2), Duration::from_secs(20))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .map_err(|e| e.to_string())?;
    verdict.map_err(Into::into)
}
