//! The built-in `mucp` client and the typed client wrapper.

mod mucp;
mod typed;

pub use mucp::MucpClient;
pub use typed::TypedClient;
