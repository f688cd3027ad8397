//! Each component trait across the boundary: an exporter (a [`Dispatch`]
//! over `Arc<dyn Trait>`) and a proxy (`impl Trait` over the crate-private `Remote`, a remote object).
//! Host and plugin link the same code, so the two ends always agree; the
//! method numbers below are part of the ABI.

use crate::abi::FfiObject;
use crate::object::{export, is_unknown_method, unknown_method, Dispatch, Remote, RemoteReply, Reply};
use crate::wire::{self, Reader, Writer};
use micro_core::{
    async_trait, BoxFuture, Broker, BrokerHandler, CallOptions, Candidates, Client, Endpoint, Error, Event, EventKind,
    Handled, Handler, HandlerFn, Listener, Message, Node, RegisterOptions, Registry, Request, Response, Result,
    SelectOptions, Selector, Server, Service, Socket, SocketReceiver, SocketSender, SubscribeOptions, Subscriber,
    Subscription, Transport, WatchOptions, Watcher,
};
use std::sync::Arc;

fn ready_err(e: Error) -> BoxFuture<'static, Result<Reply>> {
    Box::pin(std::future::ready(Err(e)))
}

/// Decodes an argument or returns the decoding error as the call's result.
macro_rules! dec {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return ready_err(e),
        }
    };
}

fn ok() -> Result<Reply> {
    Ok(Reply::default())
}

fn string_reply(s: &str) -> Result<Reply> {
    Ok(Reply::bytes(s.as_bytes().to_vec()))
}

fn take_object(objects: &mut Vec<FfiObject>, what: &str) -> Result<FfiObject> {
    if objects.is_empty() {
        return Err(Error::internal("go.micro.plugin", format!("missing {what} object")));
    }
    Ok(objects.remove(0))
}

fn reply_object(r: RemoteReply, what: &str) -> Result<FfiObject> {
    r.object.ok_or_else(|| Error::internal("go.micro.plugin", format!("no {what} object returned")))
}

/// Bytes that say when they are freed (for tests of who keeps a buffer).
#[cfg(test)]
struct Watched(Vec<u8>, Arc<std::sync::atomic::AtomicBool>);

#[cfg(test)]
impl Watched {
    /// `bytes` in a `Bytes` that sets the returned flag when its buffer is freed.
    fn bytes(bytes: &[u8]) -> (bytes::Bytes, Arc<std::sync::atomic::AtomicBool>) {
        let freed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (bytes::Bytes::from_owner(Watched(bytes.to_vec(), freed.clone())), freed)
    }
}

#[cfg(test)]
impl AsRef<[u8]> for Watched {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
impl Drop for Watched {
    fn drop(&mut self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

mod broker;
mod client;
mod handler;
mod registry;
mod selector;
mod server;
mod stream;
mod transport;

pub use broker::{export_broker, import_broker};
use broker::{export_broker_handler, import_broker_handler};
pub use client::{export_client, import_client};
use handler::{export_handler_fn, import_handler_fn};
pub use registry::{export_registry, import_registry};
pub use selector::{export_selector, import_selector};
pub use server::{export_server, import_server};
use stream::{export_stream, export_stream_handler, import_stream, import_stream_handler};
pub use transport::{export_transport, import_transport};
