//! The behaviour every registry must have, run against each built-in.

use micro_core::{EventKind, Node, RegisterOptions, Registry, Result, Service, WatchOptions};
use std::time::Duration;

pub(crate) fn svc(name: &str, id: &str, addr: &str) -> Service {
    Service {
        name: name.into(),
        version: "1.0.0".into(),
        nodes: vec![Node { id: id.into(), address: addr.into(), ..Default::default() }],
        ..Default::default()
    }
}

async fn next_event(w: &mut Box<dyn micro_core::Watcher>) -> Result<micro_core::Event> {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .map_err(|_| micro_core::Error::timeout("test", "no watch event within 5s"))?
}

pub(crate) async fn contract(r: &dyn Registry) -> Result<()> {
    assert_eq!(r.get_service("greeter").await.err().map(|e| e.code), Some(404));
    let mut w = r.watch(WatchOptions { service: Some("greeter".into()) }).await?;

    r.register(&svc("greeter", "g1", "127.0.0.1:1"), RegisterOptions::default()).await?;
    r.register(&svc("greeter", "g2", "127.0.0.1:2"), RegisterOptions { ttl: Duration::from_millis(300) }).await?;
    r.register(&svc("other", "o1", "127.0.0.1:3"), RegisterOptions::default()).await?;

    let got = r.get_service("greeter").await?;
    assert_eq!(got.len(), 1);
    let ids: Vec<&str> = got[0].nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["g1", "g2"]);
    let names: Vec<String> = r.list_services().await?.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["greeter", "other"]);

    // Creates for both greeter nodes, none for `other` (filtered).
    let mut created = Vec::new();
    while created.len() < 2 {
        let e = next_event(&mut w).await?;
        assert_eq!(e.service.name, "greeter");
        if e.kind == EventKind::Create {
            created.push(e.service.nodes[0].id.clone());
        }
    }
    created.sort();
    assert_eq!(created, ["g1", "g2"]);

    // g2 stops heart-beating: it expires and watchers hear a delete.
    loop {
        let e = next_event(&mut w).await?;
        if e.kind == EventKind::Delete {
            assert_eq!(e.service.nodes[0].id, "g2");
            break;
        }
    }
    let got = r.get_service("greeter").await?;
    assert_eq!(got[0].nodes.len(), 1);

    r.deregister(&svc("greeter", "g1", "127.0.0.1:1")).await?;
    assert_eq!(r.get_service("greeter").await.err().map(|e| e.code), Some(404));
    loop {
        let e = next_event(&mut w).await?;
        if e.kind == EventKind::Delete && e.service.nodes[0].id == "g1" {
            break;
        }
    }
    w.stop();
    assert!(w.next().await.is_err());
    Ok(())
}
