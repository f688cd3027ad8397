//! Built-in brokers.

mod memory;

pub use memory::MemoryBroker;
