//! Constructor options across the boundary: plain fields as bytes, the
//! host components they carry (registry, transport, …) as objects.

use crate::abi::FfiObject;
use crate::proxy::*;
use crate::wire::{Reader, Writer};
use micro_core::{
    BrokerOptions, ClientOptions, Error, RegistryOptions, Result, SelectorOptions, ServerOptions, TransportOptions,
};
use std::time::Duration;

fn next(objects: &mut std::vec::IntoIter<FfiObject>, what: &str) -> Result<FfiObject> {
    objects.next().ok_or_else(|| Error::internal("go.micro.plugin", format!("constructor options lack the {what}")))
}

fn put_tls(w: &mut Writer, tls: &micro_core::TlsOptions) {
    w.opt_str(tls.cert.as_deref()).opt_str(tls.key.as_deref()).opt_str(tls.ca.as_deref());
}

fn get_tls(r: &mut Reader<'_>) -> Result<micro_core::TlsOptions> {
    Ok(micro_core::TlsOptions { cert: r.opt_string()?, key: r.opt_string()?, ca: r.opt_string()? })
}

/// Encoded options: bytes and objects.
pub type Encoded = (Vec<u8>, Vec<FfiObject>);

/// Registry options.
pub fn encode_registry(o: &RegistryOptions) -> Encoded {
    let mut w = Writer::new();
    w.strs(&o.addresses).u64(o.timeout.map(|t| t.as_nanos() as u64 + 1).unwrap_or(0));
    (w.finish(), Vec::new())
}
/// Registry options.
pub fn decode_registry(b: &[u8], _: Vec<FfiObject>) -> Result<RegistryOptions> {
    let mut r = Reader::new(b);
    let addresses = r.strings()?;
    let t = r.u64()?;
    Ok(RegistryOptions { addresses, timeout: (t > 0).then(|| Duration::from_nanos(t - 1)) })
}

/// Transport options.
pub fn encode_transport(o: &TransportOptions) -> Encoded {
    let mut w = Writer::new();
    w.strs(&o.addresses).duration(o.dial_timeout).u64(o.max_message_size as u64).duration(o.read_timeout);
    put_tls(&mut w, &o.tls);
    (w.finish(), Vec::new())
}
/// Transport options.
pub fn decode_transport(b: &[u8], _: Vec<FfiObject>) -> Result<TransportOptions> {
    let mut r = Reader::new(b);
    Ok(TransportOptions {
        addresses: r.strings()?,
        dial_timeout: r.duration()?,
        max_message_size: r.u64()? as usize,
        read_timeout: r.duration()?,
        tls: get_tls(&mut r)?,
    })
}

/// Selector options.
pub fn encode_selector(o: &SelectorOptions) -> Encoded {
    let mut w = Writer::new();
    w.duration(o.cache_ttl);
    (w.finish(), vec![export_registry(o.registry.clone())])
}
/// Selector options.
pub fn decode_selector(b: &[u8], objects: Vec<FfiObject>) -> Result<SelectorOptions> {
    let mut it = objects.into_iter();
    Ok(SelectorOptions {
        cache_ttl: Reader::new(b).duration()?,
        registry: import_registry(next(&mut it, "registry")?)?,
    })
}

/// Broker options.
pub fn encode_broker(o: &BrokerOptions) -> Encoded {
    let mut w = Writer::new();
    w.strs(&o.addresses).u32(o.registry.is_some() as u32);
    put_tls(&mut w, &o.tls);
    // Last, so that a peer that does not know it ignores it (and one that
    // does reads None from a peer without it).
    w.opt_str(o.advertise.as_deref());
    (w.finish(), o.registry.iter().map(|r| export_registry(r.clone())).collect())
}
/// Broker options.
pub fn decode_broker(b: &[u8], objects: Vec<FfiObject>) -> Result<BrokerOptions> {
    let mut r = Reader::new(b);
    let addresses = r.strings()?;
    let mut it = objects.into_iter();
    let registry = if r.u32()? == 1 { Some(import_registry(next(&mut it, "registry")?)?) } else { None };
    let tls = get_tls(&mut r)?;
    Ok(BrokerOptions { addresses, registry, tls, advertise: r.opt_string().ok().flatten() })
}

/// Client options.
pub fn encode_client(o: &ClientOptions) -> Encoded {
    let mut w = Writer::new();
    w.u32(o.retries).duration(o.request_timeout).u64(o.pool_size as u64).duration(o.pool_ttl);
    put_tls(&mut w, &o.tls);
    let objects = vec![
        export_selector(o.selector.clone()),
        export_transport(o.transport.clone()),
        export_broker(o.broker.clone()),
    ];
    (w.finish(), objects)
}
/// Client options.
pub fn decode_client(b: &[u8], objects: Vec<FfiObject>) -> Result<ClientOptions> {
    let mut r = Reader::new(b);
    let mut it = objects.into_iter();
    Ok(ClientOptions {
        retries: r.u32()?,
        request_timeout: r.duration()?,
        pool_size: r.u64()? as usize,
        pool_ttl: r.duration()?,
        tls: get_tls(&mut r)?,
        selector: import_selector(next(&mut it, "selector")?)?,
        transport: import_transport(next(&mut it, "transport")?)?,
        broker: import_broker(next(&mut it, "broker")?)?,
    })
}

/// Server options.
pub fn encode_server(o: &ServerOptions) -> Encoded {
    let mut w = Writer::new();
    w.str(&o.name).str(&o.version).str(&o.id).str(&o.address).opt_str(o.advertise.as_deref());
    w.map(&o.metadata).duration(o.drain_timeout);
    w.u64(o.limits.max_connections as u64).u64(o.limits.max_in_flight as u64).duration(o.limits.idle_timeout);
    w.u64(o.limits.max_in_flight_per_connection as u64).duration(o.limits.first_message_timeout);
    put_tls(&mut w, &o.tls);
    (w.finish(), vec![export_transport(o.transport.clone()), export_broker(o.broker.clone())])
}
/// Server options.
pub fn decode_server(b: &[u8], objects: Vec<FfiObject>) -> Result<ServerOptions> {
    let mut r = Reader::new(b);
    let mut it = objects.into_iter();
    Ok(ServerOptions {
        name: r.string()?,
        version: r.string()?,
        id: r.string()?,
        address: r.string()?,
        advertise: r.opt_string()?,
        metadata: r.map()?,
        drain_timeout: r.duration()?,
        limits: micro_core::ServerLimits {
            max_connections: r.u64()? as usize,
            max_in_flight: r.u64()? as usize,
            idle_timeout: r.duration()?,
            max_in_flight_per_connection: r.u64()? as usize,
            first_message_timeout: r.duration()?,
        },
        tls: get_tls(&mut r)?,
        transport: import_transport(next(&mut it, "transport")?)?,
        broker: import_broker(next(&mut it, "broker")?)?,
    })
}
