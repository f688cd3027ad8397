//! Built-in transports.

pub use micro_core::frame;
mod tcp;
pub mod tls;

pub use tcp::{Conn, Net, TcpTransport, TokioNet};
