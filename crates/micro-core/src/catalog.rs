//! The per-type tables of named constructors (go-micro's `DefaultBrokers`,
//! `DefaultClients`, …). The constructor types here are the shapes a
//! component's `NewFunc` must have; built-ins and plugins add theirs, and
//! start-up flags pick from the tables by name.

use crate::{
    Broker, BrokerOptions, Client, ClientOptions, Codecs, Registry, RegistryOptions, Selector, SelectorOptions, Server,
    ServerOptions, Transport, TransportOptions,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Constructs a broker.
pub type NewBroker = Arc<dyn Fn(BrokerOptions) -> crate::Result<Arc<dyn Broker>> + Send + Sync>;
/// Constructs a client.
pub type NewClient = Arc<dyn Fn(ClientOptions) -> crate::Result<Arc<dyn Client>> + Send + Sync>;
/// Constructs a registry.
pub type NewRegistry = Arc<dyn Fn(RegistryOptions) -> crate::Result<Arc<dyn Registry>> + Send + Sync>;
/// Constructs a selector.
pub type NewSelector = Arc<dyn Fn(SelectorOptions) -> crate::Result<Arc<dyn Selector>> + Send + Sync>;
/// Constructs a server.
pub type NewServer = Arc<dyn Fn(ServerOptions) -> crate::Result<Arc<dyn Server>> + Send + Sync>;
/// Constructs a transport.
pub type NewTransport = Arc<dyn Fn(TransportOptions) -> crate::Result<Arc<dyn Transport>> + Send + Sync>;

/// A component name that no table entry has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}; available: {available}")]
pub struct UnknownComponent {
    /// The component type, e.g. `client`.
    pub kind: &'static str,
    /// The name asked for.
    pub name: String,
    /// The known names, comma-separated.
    pub available: String,
}

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
    pub fn get(&self, name: &str) -> Result<F, UnknownComponent> {
        self.entries.get(name).cloned().ok_or_else(|| UnknownComponent {
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
    /// Brokers.
    pub brokers: Table<NewBroker>,
    /// Clients.
    pub clients: Table<NewClient>,
    /// Registries.
    pub registries: Table<NewRegistry>,
    /// Selectors.
    pub selectors: Table<NewSelector>,
    /// Servers.
    pub servers: Table<NewServer>,
    /// Transports.
    pub transports: Table<NewTransport>,
    /// Codecs by content type.
    pub codecs: Codecs,
}

impl Catalog {
    /// Tables with nothing in them; `default_content_type` names the default codec.
    pub fn empty(default_content_type: &str) -> Self {
        Catalog {
            brokers: Table::new("broker"),
            clients: Table::new("client"),
            registries: Table::new("registry"),
            selectors: Table::new("selector"),
            servers: Table::new("server"),
            transports: Table::new("transport"),
            codecs: Codecs::new(default_content_type),
        }
    }
}
