//! Built-in codecs.

mod json;
mod proto;

pub use json::JsonCodec;
pub use proto::{Proto, ProtoCodec, ProtoJson, PROTO_TYPES};

use micro_core::Codecs;
use std::sync::Arc;

/// The content type of the JSON codec, micro's default.
pub const JSON: &str = "application/json";

/// The content type of JSON over gRPC.
pub const GRPC_JSON: &str = "application/grpc+json";

/// The built-in codecs, JSON the default: JSON under `application/json`
/// and `application/grpc+json`, protobuf under [`PROTO_TYPES`]
/// (`application/grpc` means protobuf, as in gRPC).
pub fn builtin() -> Codecs {
    let mut codecs = Codecs::new(JSON);
    codecs.insert(Arc::new(JsonCodec::default()));
    codecs.insert(Arc::new(JsonCodec::with_content_type(GRPC_JSON)));
    for ct in PROTO_TYPES {
        codecs.insert(Arc::new(ProtoCodec::new(ct)));
    }
    codecs
}
