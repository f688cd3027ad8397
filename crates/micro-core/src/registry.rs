//! Service discovery: the registry interface and go-micro's registry data model.
//!
//! The JSON field names are go-micro's, so the same records can live in a
//! store shared with go-micro services.

use crate::{async_trait, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// A service: a name and version, with the nodes that serve it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The service name, e.g. `greeter`.
    pub name: String,
    /// The version, e.g. `1.0.0`.
    #[serde(default)]
    pub version: String,
    /// Free-form metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: HashMap<String, String>,
    /// The endpoints the service serves.
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<Endpoint>,
    /// The nodes (instances) of the service.
    #[serde(default, deserialize_with = "null_as_default")]
    pub nodes: Vec<Node>,
}

/// One instance of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// A unique id, by convention `<service>-<uuid>`.
    pub id: String,
    /// Where it listens, `host:port`.
    pub address: String,
    /// Metadata, e.g. the `transport`, `protocol` and `server` it uses.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: HashMap<String, String>,
}

/// An endpoint of a service, e.g. `Greeter.Hello`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `Handler.Method`.
    pub name: String,
    /// The shape of the request.
    #[serde(default)]
    pub request: Option<Value>,
    /// The shape of the response.
    #[serde(default)]
    pub response: Option<Value>,
    /// Metadata, e.g. `stream` or `subscriber`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: HashMap<String, String>,
}

/// The shape of a value: a name, a type and nested fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// The field or type name.
    pub name: String,
    /// The type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Nested fields.
    #[serde(default, deserialize_with = "null_as_default")]
    pub values: Vec<Value>,
}

/// go-micro writes `null` for empty maps and slices; read it as empty.
fn null_as_default<'de, D, T>(de: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// Groups single-node records into one service per name and version, as
/// go-micro's registries return them; a node registered twice counts once
/// (the later record wins), and nodes are sorted by id.
pub fn merge_services(records: impl IntoIterator<Item = Service>) -> Vec<Service> {
    let mut out: Vec<Service> = Vec::new();
    for rec in records {
        match out.iter_mut().find(|s| s.name == rec.name && s.version == rec.version) {
            Some(s) => {
                for n in rec.nodes {
                    s.nodes.retain(|m| m.id != n.id);
                    s.nodes.push(n);
                }
                if s.endpoints.is_empty() {
                    s.endpoints = rec.endpoints;
                }
            }
            None => out.push(rec),
        }
    }
    for s in &mut out {
        s.nodes.sort_by(|a, b| a.id.cmp(&b.id));
    }
    out
}

/// What happened to a service in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Nodes were registered for the first time.
    Create,
    /// Nodes were registered again.
    Update,
    /// Nodes were deregistered or expired.
    Delete,
}

impl EventKind {
    /// go-micro's action string: `create`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
        }
    }
}

/// A change in the registry, as go-micro's `registry.Result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The service, with just the nodes the event is about.
    pub service: Service,
}

/// Options of [`Registry::register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterOptions {
    /// How long the registration lives unless renewed; zero means forever.
    pub ttl: Duration,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        RegisterOptions { ttl: Duration::from_secs(60) }
    }
}

/// Options of [`Registry::watch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Only watch this service; all services when `None`.
    pub service: Option<String>,
}

/// What a registry constructor is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Addresses of the registry's servers, or a directory for the local registry.
    pub addresses: Vec<String>,
    /// Timeout of one registry operation.
    pub timeout: Option<Duration>,
}

/// Service discovery.
#[async_trait]
pub trait Registry: Send + Sync {
    /// Registers the nodes of `service`; they expire after `opts.ttl` unless registered again.
    async fn register(&self, service: &Service, opts: RegisterOptions) -> Result<()>;
    /// Removes the nodes of `service`.
    async fn deregister(&self, service: &Service) -> Result<()>;
    /// Every version of a service with its live nodes; a 404 error if there is none.
    async fn get_service(&self, name: &str) -> Result<Vec<Service>>;
    /// All services (name and version; nodes may be omitted).
    async fn list_services(&self) -> Result<Vec<Service>>;
    /// Watches for changes.
    async fn watch(&self, opts: WatchOptions) -> Result<Box<dyn Watcher>>;
    /// The registry's name, e.g. `local`.
    fn name(&self) -> &str;
}

/// A stream of registry events.
#[async_trait]
pub trait Watcher: Send {
    /// The next event; an error once the watcher is stopped or broken.
    async fn next(&mut self) -> Result<Event>;
    /// Stops the watcher; `next` then returns an error.
    fn stop(&self);
}
