//! Built-in transports.

pub mod frame;
mod tcp;
pub mod tls;

pub use tcp::{Conn, Net, TcpTransport, TokioNet};
