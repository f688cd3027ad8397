//! The per-type tables of named constructors (go-micro's `DefaultBrokers`,
//! `DefaultClients`, …). Built-ins are added by [`Catalog::builtin`];
//! plugins add theirs; flags pick from them by name.

use crate::broker::MemoryBroker;
use crate::client::MucpClient;
use crate::registry::{LocalRegistry, MemoryRegistry};
use crate::selector::{CacheSelector, Strategy};
use crate::server::MucpServer;
use crate::transport::TcpTransport;
use crate::Error;
use micro_core::{
    Broker, BrokerOptions, Client, ClientOptions, Codecs, Registry, RegistryOptions, Selector,
    SelectorOptions, Server, ServerOptions, Transport, TransportOptions,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Constructs a broker.
pub type NewBroker = Arc<dyn Fn(BrokerOptions) -> micro_core::Result<Arc<dyn Broker>> + Send + Sync>;
/// Constructs a client.
pub type NewClient = Arc<dyn Fn(ClientOptions) -> micro_core::Result<Arc<dyn Client>> + Send + Sync>;
/// Constructs a registry.
pub type NewRegistry = Arc<dyn Fn(RegistryOptions) -> micro_core::Result<Arc<dyn Registry>> + Send + Sync>;
/// Constructs a selector.
pub type NewSelector = Arc<dyn Fn(SelectorOptions) -> micro_core::Result<Arc<dyn Selector>> + Send + Sync>;
/// Constructs a server.
pub type NewServer = Arc<dyn Fn(ServerOptions) -> micro_core::Result<Arc<dyn Server>> + Send + Sync>;
/// Constructs a transport.
pub type NewTransport = Arc<dyn Fn(TransportOptions) -> micro_core::Result<Arc<dyn Transport>> + Send + Sync>;

/// One component type's constructors, by name.
#[derive(Clone)]
pub struct Table<F> {
    kind: &'static str,
    entries: BTreeMap<String, F>,
}

impl<F: Clone> Table<F> {
    /// An empty table for a component type (`client`, `broker`, …).
    pub fn new(kind: &'static str) -> Self {
        Table { kind, entries: BTreeMap::new() }
    }

    /// Adds a constructor; returns the one it replaced, if any.
    pub fn insert(&mut self, name: impl Into<String>, new: F) -> Option<F> {
        self.entries.insert(name.into(), new)
    }

    /// The constructor named `name`, or an error listing the known names.
    pub fn get(&self, name: &str) -> Result<F, Error> {
        self.entries.get(name).cloned().ok_or_else(|| Error::UnknownComponent {
            kind: self.kind,
            name: name.to_string(),
            available: self.names().join(", "),
        })
    }

    /// Whether a name is known.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The known names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The component type, e.g. `client`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

impl<F> std::fmt::Debug for Table<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("kind", &self.kind).field("names", &self.entries.keys()).finish()
    }
}

/// All the tables, one per component type, plus the codecs.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// Brokers: `memory`.
    pub brokers: Table<NewBroker>,
    /// Clients: `mucp`.
    pub clients: Table<NewClient>,
    /// Registries: `local`, `memory`.
    pub registries: Table<NewRegistry>,
    /// Selectors: `random`, `roundrobin`.
    pub selectors: Table<NewSelector>,
    /// Servers: `mucp`.
    pub servers: Table<NewServer>,
    /// Transports: `tcp`.
    pub transports: Table<NewTransport>,
    /// Codecs by content type.
    pub codecs: Codecs,
}

impl Catalog {
    /// Tables with nothing in them.
    pub fn empty() -> Self {
        Catalog {
            brokers: Table::new("broker"),
            clients: Table::new("client"),
            registries: Table::new("registry"),
            selectors: Table::new("selector"),
            servers: Table::new("server"),
            transports: Table::new("transport"),
            codecs: Codecs::new(crate::codec::JSON),
        }
    }

    /// The built-in components.
    pub fn builtin() -> Self {
        let mut c = Catalog::empty();
        c.codecs = crate::codec::builtin();
        c.brokers.insert("memory", Arc::new(|o: BrokerOptions| {
            Ok(MemoryBroker::shared(o.addresses.first().map(String::as_str).unwrap_or("")) as Arc<dyn Broker>)
        }) as NewBroker);
        c.clients.insert("mucp", Arc::new(|o| Ok(Arc::new(MucpClient::new(o)) as Arc<dyn Client>)) as NewClient);
        c.registries.insert("memory", Arc::new(|o: RegistryOptions| {
            Ok(MemoryRegistry::shared(o.addresses.first().map(String::as_str).unwrap_or("")) as Arc<dyn Registry>)
        }) as NewRegistry);
        c.registries.insert("local", Arc::new(|o: RegistryOptions| {
            let dir = match o.addresses.first() {
                Some(d) if !d.is_empty() => d.into(),
                _ => LocalRegistry::default_dir(),
            };
            Ok(Arc::new(LocalRegistry::new(dir)?) as Arc<dyn Registry>)
        }) as NewRegistry);
        c.selectors.insert("random", Arc::new(|o| {
            Ok(Arc::new(CacheSelector::new(o, Strategy::Random)) as Arc<dyn Selector>)
        }) as NewSelector);
        c.selectors.insert("roundrobin", Arc::new(|o| {
            Ok(Arc::new(CacheSelector::new(o, Strategy::RoundRobin)) as Arc<dyn Selector>)
        }) as NewSelector);
        c.servers.insert("mucp", Arc::new(|o| Ok(Arc::new(MucpServer::new(o)) as Arc<dyn Server>)) as NewServer);
        c.transports.insert("tcp", Arc::new(|o| Ok(Arc::new(TcpTransport::new(o)) as Arc<dyn Transport>)) as NewTransport);
        c
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let c = Catalog::builtin();
        let e = c.clients.get("brpc").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e, "unknown client \"brpc\"; available: mucp");
        let e = c.registries.get("etcd").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e, "unknown registry \"etcd\"; available: local, memory");
    }

    #[test]
    fn every_type_has_a_builtin() {
        let c = Catalog::builtin();
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
