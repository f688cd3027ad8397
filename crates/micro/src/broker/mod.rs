//! Built-in brokers.

pub mod http;
mod memory;

pub use http::HttpBroker;
pub use memory::MemoryBroker;
