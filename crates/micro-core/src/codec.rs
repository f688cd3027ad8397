//! Encoding of request and response bodies, chosen by content type.
//!
//! Codecs are object-safe through `erased_serde`, so a table of codecs
//! keyed by content type can serve typed handlers of any serde type.

use crate::{Error, Result};
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Turns values into bytes and back for one content type.
pub trait Codec: Send + Sync {
    /// The content type it handles, e.g. `application/json`.
    fn content_type(&self) -> &str;
    /// Encodes a value.
    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Bytes>;
    /// Decodes `data` by handing a deserializer over it to `visit`.
    fn decode_with(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<()>;
}

/// Encodes a typed value with a codec.
pub fn encode<T: Serialize>(codec: &dyn Codec, value: &T) -> Result<Bytes> {
    codec.encode(value)
}

/// Decodes a typed value with a codec.
pub fn decode<T: DeserializeOwned>(codec: &dyn Codec, data: &[u8]) -> Result<T> {
    let mut out = None;
    codec.decode_with(data, &mut |de| {
        out = Some(erased_serde::deserialize::<T>(de)?);
        Ok(())
    })?;
    out.ok_or_else(|| Error::internal("go.micro.codec", "codec produced no value"))
}

/// The codecs a client or server knows, keyed by content type. Cheap to
/// clone (typed handlers hold one per request).
#[derive(Clone, Default)]
pub struct Codecs {
    by_type: Arc<HashMap<String, Arc<dyn Codec>>>,
    default_type: Arc<str>,
}

impl Codecs {
    /// An empty table whose default is `default_type`.
    pub fn new(default_type: impl Into<String>) -> Self {
        let default_type: String = default_type.into();
        Codecs { by_type: Arc::new(HashMap::new()), default_type: default_type.into() }
    }

    /// Adds (or replaces) a codec under its content type.
    pub fn insert(&mut self, codec: Arc<dyn Codec>) {
        Arc::make_mut(&mut self.by_type).insert(codec.content_type().to_string(), codec);
    }

    /// The codec of a content type; parameters such as `; charset=utf-8` are ignored.
    pub fn get(&self, content_type: &str) -> Result<Arc<dyn Codec>> {
        let base = content_type.split(';').next().unwrap_or("").trim();
        self.by_type.get(base).cloned().ok_or_else(|| {
            let mut known: Vec<&str> = self.by_type.keys().map(String::as_str).collect();
            known.sort_unstable();
            Error::bad_request(
                "go.micro.codec",
                format!("unsupported content type {base:?}; known: {}", known.join(", ")),
            )
        })
    }

    /// The default content type.
    pub fn default_type(&self) -> &str {
        &self.default_type
    }

    /// The known content types, sorted.
    pub fn content_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_type.keys().cloned().collect();
        v.sort();
        v
    }
}

impl std::fmt::Debug for Codecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codecs")
            .field("content_types", &self.content_types())
            .field("default", &self.default_type)
            .finish()
    }
}
