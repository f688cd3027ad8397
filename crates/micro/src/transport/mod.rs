//! Built-in transports.

pub mod frame;
mod tcp;

pub use tcp::{Conn, Net, TcpTransport, TokioNet};
