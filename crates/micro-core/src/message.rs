//! The unit that transports and brokers carry.

use bytes::Bytes;
use std::collections::HashMap;

/// A message: string headers and an opaque body, as go-micro's
/// `transport.Message` and `broker.Message`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Headers, e.g. `Micro-Endpoint` and `Content-Type`.
    pub header: HashMap<String, String>,
    /// The encoded body.
    pub body: Bytes,
}

impl Message {
    /// A message with the given body and no headers.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message { header: HashMap::new(), body: body.into() }
    }

    /// Adds a header, builder style.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.header.insert(key.into(), value.into());
        self
    }

    /// A header's value, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.header.get(key).map(String::as_str)
    }
}
