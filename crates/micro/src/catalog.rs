//! The built-in entries of the constructor tables ([`Catalog`], defined in
//! `micro-core` because its constructor types are what plugins implement).

use crate::broker::MemoryBroker;
use crate::client::MucpClient;
use crate::registry::{LocalRegistry, MemoryRegistry};
use crate::selector::{CacheSelector, Strategy};
use crate::server::MucpServer;
use crate::transport::TcpTransport;
pub use micro_core::catalog::{
    Catalog, NewBroker, NewClient, NewRegistry, NewSelector, NewServer, NewTransport, Table, UnknownComponent,
};
use micro_core::{Broker, BrokerOptions, Client, Registry, RegistryOptions, Selector, Server, Transport};
use std::sync::Arc;

/// A catalog holding the built-in components.
pub fn builtin() -> Catalog {
    let mut c = Catalog::empty(crate::codec::JSON);
    c.codecs = crate::codec::builtin();
    c.brokers.insert(
        "memory",
        Arc::new(|o: BrokerOptions| {
            Ok(MemoryBroker::shared(o.addresses.first().map(String::as_str).unwrap_or("")) as Arc<dyn Broker>)
        }) as NewBroker,
    );
    c.brokers.insert(
        "http",
        Arc::new(|o: BrokerOptions| Ok(Arc::new(crate::broker::HttpBroker::new(o)?) as Arc<dyn Broker>)) as NewBroker,
    );
    c.clients.insert("mucp", Arc::new(|o| Ok(Arc::new(MucpClient::new(o)) as Arc<dyn Client>)) as NewClient);
    c.registries.insert(
        "memory",
        Arc::new(|o: RegistryOptions| {
            Ok(MemoryRegistry::shared(o.addresses.first().map(String::as_str).unwrap_or("")) as Arc<dyn Registry>)
        }) as NewRegistry,
    );
    c.registries.insert(
        "local",
        Arc::new(|o: RegistryOptions| {
            let dir = match o.addresses.first() {
                Some(d) if !d.is_empty() => d.into(),
                _ => LocalRegistry::default_dir(),
            };
            Ok(Arc::new(LocalRegistry::new(dir)?) as Arc<dyn Registry>)
        }) as NewRegistry,
    );
    c.selectors.insert(
        "random",
        Arc::new(|o| Ok(Arc::new(CacheSelector::new(o, Strategy::Random)) as Arc<dyn Selector>)) as NewSelector,
    );
    c.selectors.insert(
        "roundrobin",
        Arc::new(|o| Ok(Arc::new(CacheSelector::new(o, Strategy::RoundRobin)) as Arc<dyn Selector>)) as NewSelector,
    );
    c.servers.insert("mucp", Arc::new(|o| Ok(Arc::new(MucpServer::new(o)) as Arc<dyn Server>)) as NewServer);
    c.transports.insert(
        "tcp",
        Arc::new(|o: micro_core::TransportOptions| {
            if o.tls.enabled() {
                let net = crate::transport::tls::TlsNet::new(&o.tls, o.read_timeout)?;
                Ok(Arc::new(TcpTransport::with_net(o, net, "tcp")) as Arc<dyn Transport>)
            } else {
                Ok(Arc::new(TcpTransport::new(o)) as Arc<dyn Transport>)
            }
        }) as NewTransport,
    );
    #[cfg(feature = "grpc")]
    {
        c.clients.insert(
            "grpc",
            Arc::new(|o| Ok(Arc::new(crate::grpc::GrpcClient::new(o)?) as Arc<dyn Client>)) as NewClient,
        );
        c.servers.insert(
            "grpc",
            Arc::new(|o| Ok(Arc::new(crate::grpc::GrpcServer::new(o)) as Arc<dyn Server>)) as NewServer,
        );
    }
    #[cfg(feature = "etcd")]
    micro_etcd::register(&mut c);
    #[cfg(feature = "nats")]
    micro_nats::register(&mut c);
    #[cfg(feature = "mdns")]
    micro_mdns::register(&mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let c = builtin();
        let e = c.clients.get("brpc").err().map(|e| e.to_string()).unwrap_or_default();
        let clients = if cfg!(feature = "grpc") { "grpc, mucp" } else { "mucp" };
        assert_eq!(e, format!("unknown client \"brpc\"; available: {clients}"));
        let e = c.registries.get("consul").err().map(|e| e.to_string()).unwrap_or_default();
        // The etcd registry is there when the `etcd` feature is (as in a workspace build).
        let known =
            [(cfg!(feature = "etcd"), "etcd"), (true, "local"), (cfg!(feature = "mdns"), "mdns"), (true, "memory")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ");
        assert_eq!(e, format!("unknown registry \"consul\"; available: {known}"));
    }

    #[test]
    fn every_type_has_a_builtin() {
        let c = builtin();
        for (kind, n) in [
            (c.brokers.kind(), c.brokers.names().len()),
            (c.clients.kind(), c.clients.names().len()),
            (c.registries.kind(), c.registries.names().len()),
            (c.selectors.kind(), c.selectors.names().len()),
            (c.servers.kind(), c.servers.names().len()),
            (c.transports.kind(), c.transports.names().len()),
        ] {
            assert!(n > 0, "no built-in {kind}");
        }
    }
}
