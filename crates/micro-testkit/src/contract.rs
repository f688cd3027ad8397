//! The behaviour every registry and every broker must have, written once
//! against the component traits, and run against each backend by its own
//! tests (memory, local, etcd, a plugin registry; memory, http, nats), so
//! that no backend can drift from the others.

use micro_core::{
    Broker, BrokerHandler, EventKind, Handled, Message, Node, RegisterOptions, Registry, Service, SubscribeOptions,
    WatchOptions,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Errors of a contract, as text for test output.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

fn svc(name: &str, id: &str, addr: &str) -> Service {
    Service {
        name: name.into(),
        version: "1.0.0".into(),
        nodes: vec![Node { id: id.into(), address: addr.into(), ..Default::default() }],
        ..Default::default()
    }
}

async fn next_event(w: &mut Box<dyn micro_core::Watcher>, limit: Duration) -> Result<micro_core::Event, Error> {
    match tokio::time::timeout(limit, w.next()).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(format!("no watch event within {limit:?}").into()),
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// The registry contract. Services are named `<prefix>-greeter` and
/// `<prefix>-other`, so that a shared backend (one etcd) can run it beside
/// other tests. `ttl` is the shortest registration TTL the backend honours
/// (etcd's leases count whole seconds); `limit` bounds every wait.
///
/// What it asserts: an unknown service is a 404; two nodes of a service
/// and another service are listed and got back; a watch of one service
/// hears a create for each of its nodes and nothing of the other; a node
/// that stops heart-beating expires after its TTL and watchers hear a
/// delete; deregistering the last node makes the service a 404 again and
/// is heard; a stopped watch ends.
pub async fn registry(r: &dyn Registry, prefix: &str, ttl: Duration, limit: Duration) -> Result<(), Error> {
    let greeter = format!("{prefix}-greeter");
    let other = format!("{prefix}-other");
    let e = r.get_service(&greeter).await.err();
    check(e.as_ref().map(|e| e.code) == Some(404), || format!("unknown service: {e:?}"))?;
    let mut w = r.watch(WatchOptions { service: Some(greeter.clone()) }).await?;

    r.register(&svc(&greeter, "g1", "127.0.0.1:1"), RegisterOptions::default()).await?;
    r.register(&svc(&greeter, "g2", "127.0.0.1:2"), RegisterOptions { ttl }).await?;
    r.register(&svc(&other, "o1", "127.0.0.1:3"), RegisterOptions::default()).await?;

    let got = r.get_service(&greeter).await?;
    check(got.len() == 1, || format!("one version of {greeter}: {got:?}"))?;
    let mut ids: Vec<&str> = got[0].nodes.iter().map(|n| n.id.as_str()).collect();
    ids.sort_unstable();
    check(ids == ["g1", "g2"], || format!("nodes of {greeter}: {ids:?}"))?;
    let mut names: Vec<String> =
        r.list_services().await?.into_iter().map(|s| s.name).filter(|n| n.starts_with(prefix)).collect();
    names.sort();
    names.dedup();
    check(names == [greeter.clone(), other.clone()], || format!("listed: {names:?}"))?;

    // Creates for both nodes of the watched service, none for the other.
    let mut created = Vec::new();
    while created.len() < 2 {
        let e = next_event(&mut w, limit).await?;
        check(e.service.name == greeter, || format!("an event of {} on a watch of {greeter}", e.service.name))?;
        if e.kind == EventKind::Create || e.kind == EventKind::Update {
            for n in &e.service.nodes {
                if !created.contains(&n.id) {
                    created.push(n.id.clone());
                }
            }
        }
    }
    created.sort();
    check(created == ["g1", "g2"], || format!("creates heard: {created:?}"))?;

    // g2 stops heart-beating: it expires, and the watch hears it.
    loop {
        let e = next_event(&mut w, limit).await?;
        if e.kind == EventKind::Delete {
            let ids: Vec<&str> = e.service.nodes.iter().map(|n| n.id.as_str()).collect();
            check(ids == ["g2"], || format!("the expiry's delete names {ids:?}"))?;
            break;
        }
    }
    let got = r.get_service(&greeter).await?;
    let ids: Vec<&str> = got.iter().flat_map(|s| s.nodes.iter().map(|n| n.id.as_str())).collect();
    check(ids == ["g1"], || format!("after the expiry: {ids:?}"))?;

    r.deregister(&svc(&greeter, "g1", "127.0.0.1:1")).await?;
    let e = r.get_service(&greeter).await.err();
    check(e.as_ref().map(|e| e.code) == Some(404), || format!("after deregistering every node: {e:?}"))?;
    loop {
        let e = next_event(&mut w, limit).await?;
        if e.kind == EventKind::Delete && e.service.nodes.iter().any(|n| n.id == "g1") {
            break;
        }
    }
    w.stop();
    check(w.next().await.is_err(), || "a stopped watch goes on".into())?;
    r.deregister(&svc(&other, "o1", "127.0.0.1:3")).await?;
    Ok(())
}

/// Messages a subscriber received, in order, with the topic each came with.
type Inbox = Arc<Mutex<Vec<(String, Message)>>>;

fn inbox() -> (Inbox, BrokerHandler) {
    let got: Inbox = Arc::default();
    let g = got.clone();
    let handler: BrokerHandler = Arc::new(move |topic: &str, m| {
        g.lock().unwrap_or_else(|p| p.into_inner()).push((topic.to_string(), m));
        Handled::ok()
    });
    (got, handler)
}

fn count(i: &Inbox) -> usize {
    i.lock().unwrap_or_else(|p| p.into_inner()).len()
}

async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{what}: not within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The broker contract: `publisher` publishes, `a` and `b` subscribe (for
/// an in-process broker they may all be one instance; for a networked one,
/// separate clients). On topic `<prefix>.<...>`:
///
/// every subscriber receives every message, with its topic, body and
/// headers, in the order published; a queue group shares the messages (each goes to
/// exactly one member); after unsubscribing nothing more arrives.
pub async fn broker(
    publisher: &dyn Broker,
    a: &dyn Broker,
    b: &dyn Broker,
    prefix: &str,
    limit: Duration,
) -> Result<(), Error> {
    for x in [publisher, a, b] {
        x.connect().await?;
    }
    // Fan-out: both get all, in order, headers included.
    let topic = format!("{prefix}.fanout");
    let (ia, ha) = inbox();
    let (ib, hb) = inbox();
    let sa = a.subscribe(&topic, ha, SubscribeOptions::default()).await?;
    let sb = b.subscribe(&topic, hb, SubscribeOptions::default()).await?;
    check(sa.topic() == topic && sa.queue().is_none(), || "the subscription names its topic".into())?;
    const N: usize = 50;
    for i in 0..N {
        let m = Message::new(format!("{{\"n\":{i}}}")).with_header("X-Seq", i.to_string());
        publisher.publish(&topic, m).await?;
    }
    until(limit, "fan-out to both subscribers", || count(&ia) >= N && count(&ib) >= N)
        .await
        .map_err(|e| format!("{e} (a got {}, b got {} of {N})", count(&ia), count(&ib)))?;
    check(count(&ia) == N && count(&ib) == N, || {
        format!("a got {}, b got {} of {N}: duplicates", count(&ia), count(&ib))
    })?;
    for (name, i) in [("a", &ia), ("b", &ib)] {
        let got = i.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (k, (t, m)) in got.iter().enumerate() {
            check(*t == topic, || format!("{name}: message {k} was handed topic {t:?}, published to {topic:?}"))?;
            check(m.body == format!("{{\"n\":{k}}}").as_bytes(), || format!("{name}: message {k} is {:?}", m.body))?;
            check(m.header.get("X-Seq").map(String::as_str) == Some(k.to_string().as_str()), || {
                format!("{name}: message {k}'s headers {:?}", m.header)
            })?;
        }
    }
    // Unsubscribed: nothing more for a, b goes on.
    sa.unsubscribe().await?;
    publisher.publish(&topic, Message::new("{\"after\":true}")).await?;
    until(limit, "b after a unsubscribed", || count(&ib) == N + 1).await?;
    check(count(&ia) == N, || format!("a got {} after unsubscribing", count(&ia) - N))?;
    sb.unsubscribe().await?;

    // A queue group: each message to exactly one member.
    let topic = format!("{prefix}.queue");
    let (qa, ha) = inbox();
    let (qb, hb) = inbox();
    let q = || SubscribeOptions { queue: Some(format!("{prefix}-workers")) };
    let sa = a.subscribe(&topic, ha, q()).await?;
    let sb = b.subscribe(&topic, hb, q()).await?;
    check(sa.queue() == Some(format!("{prefix}-workers").as_str()), || "the subscription names its queue".into())?;
    for i in 0..N {
        publisher.publish(&topic, Message::new(format!("{i}"))).await?;
    }
    until(limit, "the queue group's share", || count(&qa) + count(&qb) >= N).await?;
    // Nothing is delivered twice: wait as long again for a duplicate.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen: Vec<String> = [&qa, &qb]
        .iter()
        .flat_map(|i| i.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .map(|(_, m)| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    seen.sort_by_key(|s| s.parse::<usize>().unwrap_or(usize::MAX));
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    check(seen == want, || format!("the queue group got {seen:?}"))?;
    sa.unsubscribe().await?;
    sb.unsubscribe().await?;
    Ok(())
}
