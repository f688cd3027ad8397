//! The service: owns the seven components, registers itself, serves until
//! a signal, then deregisters and drains.

use crate::catalog::Catalog;
use crate::client::TypedClient;
use crate::flags::{split_list, Flags};
use crate::server::{typed_handler, typed_subscriber, Context};
use crate::Error;
use micro_core::{
    Broker, BrokerOptions, ClientOptions, Codecs, Handler, RegisterOptions, Registry, RegistryOptions, Selector,
    SelectorOptions, Server, ServerOptions, Transport, TransportOptions,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Builds a [`Service`]. Explicit settings are defaults that flags override.
#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    name: String,
    version: String,
    address: Option<String>,
    metadata: HashMap<String, String>,
    register_ttl: Duration,
    register_interval: Duration,
    drain_timeout: Duration,
    flags: Flags,
    catalog: Catalog,
}

impl ServiceBuilder {
    /// The version, e.g. `1.0.0` (default `latest`).
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }
    /// Address to listen on (default: a free port on loopback, or on all
    /// interfaces with the `mdns` registry; see [`crate::addr::default_listen`]).
    pub fn address(mut self, a: impl Into<String>) -> Self {
        self.address = Some(a.into());
        self
    }
    /// Adds node metadata.
    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }
    /// How long the registration lives without renewal (default 60s).
    pub fn register_ttl(mut self, ttl: Duration) -> Self {
        self.register_ttl = ttl;
        self
    }
    /// How often the registration is renewed (default 30s).
    pub fn register_interval(mut self, interval: Duration) -> Self {
        self.register_interval = interval;
        self
    }
    /// How long shutdown waits for in-flight requests (default 10s).
    pub fn drain_timeout(mut self, t: Duration) -> Self {
        self.drain_timeout = t;
        self
    }
    /// Start-up flags, which override the settings above.
    pub fn flags(mut self, flags: Flags) -> Self {
        self.flags = flags;
        self
    }
    /// The constructor tables to pick components from (default: the built-ins).
    pub fn catalog(mut self, catalog: Catalog) -> Self {
        self.catalog = catalog;
        self
    }

    /// Creates the components named by the flags and the service around them.
    pub fn build(mut self) -> Result<Service, Error> {
        crate::plugin::load_all(
            &self.flags.plugin,
            crate::plugin::LoadOptions {
                allow_insecure: self.flags.plugin_allow_insecure,
                allow_panic_abort: self.flags.plugin_allow_panic_abort,
            },
            &mut self.catalog,
        )?;
        let f = &self.flags;
        let c = &self.catalog;
        let pick = |flag: &Option<String>, default: &str| flag.clone().unwrap_or_else(|| default.to_string());
        let names = Names {
            registry: pick(&f.registry, "local"),
            broker: pick(&f.broker, "memory"),
            transport: pick(&f.transport, "tcp"),
            selector: pick(&f.selector, "random"),
            client: pick(&f.client, "mucp"),
            server: pick(&f.server, "mucp"),
        };
        // Look every name up first, so a typo is reported before anything starts.
        let new_registry = c.registries.get(&names.registry)?;
        let new_broker = c.brokers.get(&names.broker)?;
        let new_transport = c.transports.get(&names.transport)?;
        let new_selector = c.selectors.get(&names.selector)?;
        let new_client = c.clients.get(&names.client)?;
        let new_server = c.servers.get(&names.server)?;

        let failed = |kind: &'static str, name: &str| {
            let name = name.to_string();
            move |cause: micro_core::Error| Error::Component { kind, name, cause }
        };
        let registry =
            new_registry(RegistryOptions { addresses: split_list(f.registry_address.as_deref()), timeout: None })
                .map_err(failed("registry", &names.registry))?;
        let tls = micro_core::TlsOptions {
            cert: f.transport_tls_cert.clone(),
            key: f.transport_tls_key.clone(),
            ca: f.transport_tls_ca.clone(),
        };
        let broker = new_broker(BrokerOptions {
            addresses: split_list(f.broker_address.as_deref()),
            registry: Some(registry.clone()),
            tls: tls.clone(),
            advertise: f.broker_advertise.clone(),
        })
        .map_err(failed("broker", &names.broker))?;
        let defaults = TransportOptions::default();
        let transport = new_transport(TransportOptions {
            addresses: split_list(f.transport_address.as_deref()),
            max_message_size: f.max_message_size.unwrap_or(defaults.max_message_size),
            read_timeout: f.transport_read_timeout.unwrap_or(defaults.read_timeout),
            tls: tls.clone(),
            ..defaults
        })
        .map_err(failed("transport", &names.transport))?;
        let selector = new_selector(SelectorOptions { registry: registry.clone(), cache_ttl: Duration::from_secs(60) })
            .map_err(failed("selector", &names.selector))?;
        let client = new_client(ClientOptions {
            selector: selector.clone(),
            transport: transport.clone(),
            broker: broker.clone(),
            retries: f.client_retries.unwrap_or(1),
            request_timeout: f.client_request_timeout.unwrap_or(Duration::from_secs(5)),
            pool_size: f.client_pool_size.unwrap_or(100),
            pool_ttl: f.client_pool_ttl.unwrap_or(Duration::from_secs(60)),
            tls: tls.clone(),
        })
        .map_err(failed("client", &names.client))?;

        let name = f.server_name.clone().unwrap_or(self.name);
        if name.is_empty() {
            return Err(Error::Config("the service needs a name (--server-name)".into()));
        }
        let mut metadata = self.metadata;
        for kv in &f.server_metadata {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("--server-metadata {kv:?} is not key=value")))?;
            metadata.insert(k.to_string(), v.to_string());
        }
        metadata.insert("registry".into(), registry.name().to_string());
        let register_ttl = f.register_ttl.unwrap_or(self.register_ttl);
        let register_interval = f.register_interval.unwrap_or(self.register_interval);
        if register_interval.is_zero() {
            return Err(Error::Config("--register-interval must be at least 1 second".into()));
        }
        let server = new_server(ServerOptions {
            id: f.server_id.clone().unwrap_or_else(|| format!("{name}-{}", uuid::Uuid::new_v4())),
            name: name.clone(),
            version: f.server_version.clone().unwrap_or(self.version),
            address: f
                .server_address
                .clone()
                .or(self.address)
                .unwrap_or_else(|| crate::addr::default_listen(registry.name()).to_string()),
            advertise: f.server_advertise.clone(),
            metadata,
            transport: transport.clone(),
            broker: broker.clone(),
            drain_timeout: self.drain_timeout,
            limits: micro_core::ServerLimits {
                max_connections: f.server_max_connections.unwrap_or(10_000),
                max_in_flight: f.server_max_in_flight.unwrap_or(4096),
                idle_timeout: f.server_idle_timeout.unwrap_or(Duration::from_secs(300)),
                max_in_flight_per_connection: f.server_max_in_flight_per_connection.unwrap_or(256).max(1),
                first_message_timeout: f.server_first_message_timeout.unwrap_or(Duration::from_secs(10)),
            },
            tls,
        })
        .map_err(failed("server", &names.server))?;

        let codecs = self.catalog.codecs.clone();
        let service = Service {
            name,
            client: TypedClient::new(client, codecs.clone()),
            codecs,
            registry,
            broker,
            transport,
            selector,
            server,
            register_ttl,
            register_interval,
            heartbeat: Mutex::new(None),
        };
        service.handle("Debug.Health", |_: serde_json::Value| async { Ok(serde_json::json!({ "status": "ok" })) })?;
        Ok(service)
    }
}

struct Names {
    registry: String,
    broker: String,
    transport: String,
    selector: String,
    client: String,
    server: String,
}

/// A service: its components, its handlers, and its life cycle.
pub struct Service {
    name: String,
    codecs: Codecs,
    registry: Arc<dyn Registry>,
    broker: Arc<dyn Broker>,
    transport: Arc<dyn Transport>,
    selector: Arc<dyn Selector>,
    server: Arc<dyn Server>,
    client: TypedClient,
    register_ttl: Duration,
    register_interval: Duration,
    heartbeat: Mutex<Option<CancellationToken>>,
}

impl Service {
    /// Starts building a service called `name`.
    pub fn builder(name: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder {
            name: name.into(),
            version: "latest".into(),
            address: None,
            metadata: HashMap::new(),
            register_ttl: Duration::from_secs(60),
            register_interval: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            flags: Flags::default(),
            catalog: crate::catalog::builtin(),
        }
    }

    /// Serves `name` (`Handler.Method`) with a typed async function.
    pub fn handle<Req, Resp, F, Fut>(&self, name: &str, f: F) -> Result<(), Error>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = micro_core::Result<Resp>> + Send + 'static,
    {
        self.handle_with_context(name, move |_ctx: Context, req: Req| f(req))
    }

    /// Like [`handle`](Self::handle), with the request's [`Context`] (metadata).
    pub fn handle_with_context<Req, Resp, F, Fut>(&self, name: &str, f: F) -> Result<(), Error>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = micro_core::Result<Resp>> + Send + 'static,
    {
        self.handle_raw(typed_handler(name, self.codecs.clone(), f))
    }

    /// Serves a stream endpoint `name` (`Handler.Method`) with a typed async
    /// function: it receives `Req` messages and sends `Resp` messages on its
    /// [`TypedStream`](crate::TypedStream), and its result ends the stream.
    pub fn handle_stream<Req, Resp, F, Fut>(&self, name: &str, f: F) -> Result<(), Error>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Context, crate::TypedStream<Resp, Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = micro_core::Result<()>> + Send + 'static,
    {
        self.handle_raw(crate::server::typed_stream_handler(name, self.codecs.clone(), f))
    }

    /// Serves an untyped [`Handler`].
    pub fn handle_raw(&self, handler: Handler) -> Result<(), Error> {
        Ok(self.server.handle(handler)?)
    }

    /// Subscribes a typed async function to a topic; every instance gets every message.
    pub fn subscribe<T, F, Fut>(&self, topic: &str, f: F) -> Result<(), Error>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = micro_core::Result<()>> + Send + 'static,
    {
        Ok(self.server.subscribe(typed_subscriber(topic, None, self.codecs.clone(), f))?)
    }

    /// Subscribes in a queue group: one member of the group gets each message.
    pub fn subscribe_queue<T, F, Fut>(&self, topic: &str, queue: &str, f: F) -> Result<(), Error>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = micro_core::Result<()>> + Send + 'static,
    {
        Ok(self.server.subscribe(typed_subscriber(topic, Some(queue.to_string()), self.codecs.clone(), f))?)
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// A typed client over the service's client component.
    pub fn client(&self) -> &TypedClient {
        &self.client
    }
    /// The registry component.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }
    /// The broker component.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }
    /// The transport component.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }
    /// The selector component.
    pub fn selector(&self) -> &Arc<dyn Selector> {
        &self.selector
    }
    /// The server component.
    pub fn server(&self) -> &Arc<dyn Server> {
        &self.server
    }
    /// The codecs.
    pub fn codecs(&self) -> &Codecs {
        &self.codecs
    }

    /// Connects the broker, starts the server, registers, and keeps the
    /// registration alive every `register_interval`.
    pub async fn start(&self) -> Result<(), Error> {
        self.broker.connect().await?;
        self.server.start().await?;
        let record = self.server.service();
        let opts = RegisterOptions { ttl: self.register_ttl };
        if let Err(e) = self.registry.register(&record, opts).await {
            let _ = self.server.stop().await;
            return Err(e.into());
        }
        let node = record.nodes.first().map(|n| (n.id.clone(), n.address.clone())).unwrap_or_default();
        tracing::info!(service = %record.name, node = %node.0, address = %node.1, registry = self.registry.name(), "registered");
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let registry = self.registry.clone();
        let interval = self.register_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                if let Err(e) = registry.register(&record, opts).await {
                    tracing::warn!(error = %e, "re-registration failed; will retry");
                }
            }
        });
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(cancel);
        Ok(())
    }

    /// Deregisters, then stops the server, waiting for in-flight requests.
    /// Every step has a deadline: a registry or broker that is down (etcd
    /// unreachable, NATS stopped) is logged and skipped, never waited for, so
    /// stopping takes at most [`STOP_STEP_LIMIT`] per backend plus the drain.
    pub async fn stop(&self) -> Result<(), Error> {
        if let Some(hb) = self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()).take() {
            hb.cancel();
        }
        let record = self.server.service();
        let deregistered = match tokio::time::timeout(STOP_STEP_LIMIT, self.registry.deregister(&record)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(registry = self.registry.name(), limit = ?STOP_STEP_LIMIT, "deregister timed out: is the registry down? skipped");
                Ok(())
            }
        };
        self.server.stop().await?;
        match tokio::time::timeout(STOP_STEP_LIMIT, self.broker.disconnect()).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "broker disconnect failed"),
            Err(_) => {
                tracing::warn!(broker = self.broker.name(), limit = ?STOP_STEP_LIMIT, "broker disconnect timed out: is the broker down? skipped")
            }
            Ok(Ok(())) => {}
        }
        deregistered?;
        tracing::info!(service = %record.name, "deregistered and stopped");
        Ok(())
    }

    /// Starts, serves until `shutdown` completes, then stops.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        self.start().await?;
        shutdown.await;
        self.stop().await
    }

    /// Starts and serves until SIGINT or SIGTERM, then deregisters and drains.
    pub async fn run(&self) -> Result<(), Error> {
        self.start().await?;
        shutdown_signal().await?;
        self.stop().await
    }
}

/// The most each step of stopping (deregister, unsubscribe, broker
/// disconnect) may take before it is logged and skipped.
pub const STOP_STEP_LIMIT: Duration = Duration::from_secs(5);

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Config(format!("cannot watch SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Config(format!("cannot watch SIGINT: {e}")))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
    Ok(())
}
