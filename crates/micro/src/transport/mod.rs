//! Built-in transports.

pub use micro_core::frame;
mod tcp;
pub mod tls;

#[cfg(feature = "grpc")]
pub(crate) use tcp::tune;
pub use tcp::{Conn, Halves, Net, TcpTransport, TcpWriteHalf, TokioNet};
