//! Built-in codecs.

mod json;

pub use json::JsonCodec;

use micro_core::Codecs;
use std::sync::Arc;

/// The content type of the JSON codec, micro's default.
pub const JSON: &str = "application/json";

/// The built-in codecs, JSON the default.
pub fn builtin() -> Codecs {
    let mut codecs = Codecs::new(JSON);
    codecs.insert(Arc::new(JsonCodec));
    codecs
}
