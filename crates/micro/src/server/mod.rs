//! The built-in `mucp` server and the typed handler adapters.

mod cost;
mod endpoints;
mod mucp;
mod typed;

#[cfg(feature = "grpc")]
pub(crate) use endpoints::{unsubscribe_all, Endpoints};

#[cfg(feature = "grpc")]
pub(crate) use mucp::invoke;
pub use mucp::MucpServer;
pub use typed::{typed_handler, typed_stream_handler, typed_subscriber, Context};
