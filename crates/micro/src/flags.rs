//! Start-up flags with go-micro's names and `MICRO_*` environment fallbacks.
//!
//! Embed [`Flags`] in a program's own clap parser with
//! `#[command(flatten)]`. Every flag also accepts go-micro's underscore
//! spelling (`--server_name`). Flags left unset fall back to what the
//! [`ServiceBuilder`](crate::ServiceBuilder) was given, then to the defaults.

use std::time::Duration;

/// The component and service flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Micro options")]
pub struct Flags {
    /// Plugin libraries to load at start-up, comma-separated or repeated;
    /// `path#sha256=<hex>` pins a digest
    #[arg(long, env = "MICRO_PLUGIN", value_delimiter = ',', global = true)]
    pub plugin: Vec<String>,
    /// Load plugins even if other users can write to them
    #[arg(long, env = "MICRO_PLUGIN_ALLOW_INSECURE", alias = "plugin_allow_insecure", global = true)]
    pub plugin_allow_insecure: bool,
    /// Load plugins built with panic = "abort" (a panic in one ends the process)
    #[arg(long, env = "MICRO_PLUGIN_ALLOW_PANIC_ABORT", global = true)]
    pub plugin_allow_panic_abort: bool,
    /// Client for RPC calls [default: mucp]
    #[arg(long, env = "MICRO_CLIENT", global = true)]
    pub client: Option<String>,
    /// Deadline of a call, e.g. 5s, 500ms [default: 5s]
    #[arg(long, env = "MICRO_CLIENT_REQUEST_TIMEOUT", alias = "client_request_timeout", value_parser = parse_duration, global = true)]
    pub client_request_timeout: Option<Duration>,
    /// Retries of a call after a connection error [default: 1]
    #[arg(long, env = "MICRO_CLIENT_RETRIES", alias = "client_retries", global = true)]
    pub client_retries: Option<u32>,
    /// Idle connections the client keeps per address [default: 100]
    #[arg(long, env = "MICRO_CLIENT_POOL_SIZE", alias = "client_pool_size", global = true)]
    pub client_pool_size: Option<usize>,
    /// How long an idle pooled connection is kept [default: 1m]
    #[arg(long, env = "MICRO_CLIENT_POOL_TTL", alias = "client_pool_ttl", value_parser = parse_duration, global = true)]
    pub client_pool_ttl: Option<Duration>,
    /// Registration TTL, e.g. 60 (seconds, as go-micro) or 1m [default: 60s]
    #[arg(long, env = "MICRO_REGISTER_TTL", alias = "register_ttl", value_parser = parse_duration, global = true)]
    pub register_ttl: Option<Duration>,
    /// Re-registration interval, e.g. 30 (seconds) or 30s [default: 30s]
    #[arg(long, env = "MICRO_REGISTER_INTERVAL", alias = "register_interval", value_parser = parse_duration, global = true)]
    pub register_interval: Option<Duration>,
    /// Server for handlers and subscribers [default: mucp]
    #[arg(long, env = "MICRO_SERVER", global = true)]
    pub server: Option<String>,
    /// Name of the service
    #[arg(long, env = "MICRO_SERVER_NAME", alias = "server_name", global = true)]
    pub server_name: Option<String>,
    /// Version of the service
    #[arg(long, env = "MICRO_SERVER_VERSION", alias = "server_version", global = true)]
    pub server_version: Option<String>,
    /// Id of this node [default: NAME-UUID]
    #[arg(long, env = "MICRO_SERVER_ID", alias = "server_id", global = true)]
    pub server_id: Option<String>,
    /// Address to listen on, host:port [default: 127.0.0.1:0; 0.0.0.0:0 with the mdns registry]
    #[arg(long, env = "MICRO_SERVER_ADDRESS", alias = "server_address", global = true)]
    pub server_address: Option<String>,
    /// Address to advertise in the registry instead of the bound one
    #[arg(long, env = "MICRO_SERVER_ADVERTISE", alias = "server_advertise", global = true)]
    pub server_advertise: Option<String>,
    /// Metadata of this node, key=value (repeatable, or comma-separated)
    #[arg(long, env = "MICRO_SERVER_METADATA", alias = "server_metadata", value_delimiter = ',', global = true)]
    pub server_metadata: Vec<String>,
    /// Broker for pub/sub [default: memory]
    #[arg(long, env = "MICRO_BROKER", global = true)]
    pub broker: Option<String>,
    /// Broker addresses, comma-separated
    #[arg(long, env = "MICRO_BROKER_ADDRESS", alias = "broker_address", global = true)]
    pub broker_address: Option<String>,
    /// Address the http broker registers for its listener instead of the bound one, host:port
    #[arg(long, env = "MICRO_BROKER_ADVERTISE", alias = "broker_advertise", global = true)]
    pub broker_advertise: Option<String>,
    /// Registry for discovery [default: local]
    #[arg(long, env = "MICRO_REGISTRY", global = true)]
    pub registry: Option<String>,
    /// Registry addresses, comma-separated (for `local`: its directory)
    #[arg(long, env = "MICRO_REGISTRY_ADDRESS", alias = "registry_address", global = true)]
    pub registry_address: Option<String>,
    /// Selector strategy: random or roundrobin [default: random]
    #[arg(long, env = "MICRO_SELECTOR", global = true)]
    pub selector: Option<String>,
    /// Transport between client and server [default: tcp]
    #[arg(long, env = "MICRO_TRANSPORT", global = true)]
    pub transport: Option<String>,
    /// Transport addresses, comma-separated
    #[arg(long, env = "MICRO_TRANSPORT_ADDRESS", alias = "transport_address", global = true)]
    pub transport_address: Option<String>,
    /// Time for the rest of a message to arrive once it has started [default: 10s]
    #[arg(long, env = "MICRO_TRANSPORT_READ_TIMEOUT", value_parser = parse_duration, global = true)]
    pub transport_read_timeout: Option<Duration>,
    /// TLS certificate chain (PEM) of this side; with --transport-tls-key, servers speak TLS
    #[arg(long, env = "MICRO_TRANSPORT_TLS_CERT", global = true)]
    pub transport_tls_cert: Option<String>,
    /// TLS private key (PEM) of this side
    #[arg(long, env = "MICRO_TRANSPORT_TLS_KEY", global = true)]
    pub transport_tls_key: Option<String>,
    /// CA (PEM) that peers must chain to: clients verify servers with it, and a server with it requires client certificates (mTLS)
    #[arg(long, env = "MICRO_TRANSPORT_TLS_CA", global = true)]
    pub transport_tls_ca: Option<String>,
    /// Largest message accepted or sent, in bytes [default: 4194304]
    #[arg(long, env = "MICRO_MAX_MESSAGE_SIZE", global = true)]
    pub max_message_size: Option<usize>,
    /// Open connections a server accepts [default: 10000]
    #[arg(long, env = "MICRO_SERVER_MAX_CONNECTIONS", global = true)]
    pub server_max_connections: Option<usize>,
    /// Requests a server handles at once; more are answered 503 [default: 4096]
    #[arg(long, env = "MICRO_SERVER_MAX_IN_FLIGHT", global = true)]
    pub server_max_in_flight: Option<usize>,
    /// Close a connection idle for this long [default: 5m]
    #[arg(long, env = "MICRO_SERVER_IDLE_TIMEOUT", value_parser = parse_duration, global = true)]
    pub server_idle_timeout: Option<Duration>,
    /// Requests one connection may have in flight; more are answered 503 [default: 256]
    #[arg(long, env = "MICRO_SERVER_MAX_IN_FLIGHT_PER_CONNECTION", global = true)]
    pub server_max_in_flight_per_connection: Option<usize>,
    /// Close a new connection that sends no request within this long [default: 10s]
    #[arg(long, env = "MICRO_SERVER_FIRST_MESSAGE_TIMEOUT", value_parser = parse_duration, global = true)]
    pub server_first_message_timeout: Option<Duration>,
}

impl Flags {
    /// Flags for a world of its own inside this process: the `memory`
    /// registry and broker, both named `world`, so that services built with
    /// the same name find each other and no one else (tests, examples).
    /// Add to it with struct update: `Flags { server: Some("grpc".into()), ..Flags::memory("t") }`.
    pub fn memory(world: &str) -> Flags {
        Flags {
            registry: Some("memory".into()),
            registry_address: Some(world.into()),
            broker: Some("memory".into()),
            broker_address: Some(world.into()),
            ..Flags::default()
        }
    }
}

/// Splits a comma-separated address list, skipping empty entries.
pub fn split_list(s: Option<&str>) -> Vec<String> {
    s.map(|s| s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()).unwrap_or_default()
}

/// Parses `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?} in {s:?}: use ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: Flags,
    }

    #[test]
    fn every_duration_flag_takes_the_same_syntax() {
        // go-micro's plain seconds and micro's units, for the TTL flags too.
        for (arg, want) in [("60", 60), ("1m", 60), ("90s", 90)] {
            let cli = Cli::try_parse_from(["t", "--register-ttl", arg, "--register-interval", arg]);
            let f = cli.map(|c| c.flags).ok();
            assert_eq!(f.as_ref().and_then(|f| f.register_ttl), Some(Duration::from_secs(want)), "{arg}");
            assert_eq!(f.and_then(|f| f.register_interval), Some(Duration::from_secs(want)), "{arg}");
        }
    }

    #[test]
    fn absurd_durations_are_errors_not_panics() {
        for s in ["99999999999999999999s", "1e400s", "999999999999999999999999h"] {
            let e = parse_duration(s).err().unwrap_or_default();
            assert!(e.contains("too large") || e.contains("invalid duration"), "{s}: {e}");
        }
        let r = Cli::try_parse_from(["t", "--client-request-timeout", "99999999999999999999s"]);
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("is too large"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn hyphen_and_go_micro_underscore_spellings() -> Result<(), clap::Error> {
        let c = Cli::try_parse_from([
            "x",
            "--server_name",
            "a",
            "--registry-address",
            "/tmp/r",
            "--server-metadata",
            "a=1,b=2",
        ])?;
        assert_eq!(c.flags.server_name.as_deref(), Some("a"));
        assert_eq!(c.flags.registry_address.as_deref(), Some("/tmp/r"));
        assert_eq!(c.flags.server_metadata, ["a=1", "b=2"]);
        Ok(())
    }

    #[test]
    fn lists_skip_empty_entries() {
        assert_eq!(split_list(Some("a,,b, ")), ["a", "b"]);
        assert!(split_list(None).is_empty());
    }
}
