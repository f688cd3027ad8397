//! The built-in `mucp` server and the typed handler adapters.

mod mucp;
mod typed;

pub use mucp::MucpServer;
pub use typed::{typed_handler, typed_subscriber, Context};
