//! A host that loads and calls a plugin outside any tokio runtime (a plain
//! thread driving futures with a simple executor): the plugin's background
//! tasks (`micro_plugin::host::spawn`) then run on the plugin's own runtime
//! instead of being dropped. Its own test binary, because the host
//! remembers the first runtime that loads a plugin, process-wide.

mod common;

use common::*;
use micro::core::{CallOptions, Request};
use micro::{Flags, Service};
use std::time::Duration;

#[test]
fn host_spawn_falls_back_to_the_plugin_runtime_without_a_host_runtime() -> TestResult {
    let plugin = probe(None);
    assert!(tokio::runtime::Handle::try_current().is_err(), "this test must run outside any runtime");
    let svc = Service::builder("host")
        .flags(Flags {
            plugin: vec![plugin.display().to_string()],
            client: Some("probe".into()),
            registry: Some("memory".into()),
            ..Flags::default()
        })
        .build()?;
    let c = svc.client().inner().clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let req = Request { service: "x".into(), endpoint: "Probe.HostSpawn".into(), ..Default::default() };
        let _ = tx.send(futures::executor::block_on(c.call(req, CallOptions::default())));
    });
    let r = rx.recv_timeout(Duration::from_secs(20)).map_err(|_| "the spawned task never ran: the call hangs")??;
    assert_eq!(String::from_utf8_lossy(&r.body), "7");
    Ok(())
}
