//! The `grpc` server and client: standard gRPC over HTTP/2, so that any gRPC
//! client can call a micro service and a micro client can call any gRPC
//! service. tonic does the gRPC framing, status and compression, hyper the
//! HTTP/2 (both well kept; nothing of HTTP/2 is written here).
//!
//! **Paths.** A handler `Greeter.Hello` is served at `/<package>.Greeter/Hello`
//! for any package (and at `/Greeter/Hello`): the server matches the last
//! dot-separated part of the gRPC service name, as go-micro's grpc server
//! does, so whatever `package` a `.proto` declares, its generated clients
//! find the handler. The client calls `/<service>.Greeter/Hello`, i.e. the
//! package is the micro service name (go-micro's rule), so a service named
//! after its proto package (`helloworld`) is called at exactly the path its
//! `.proto` gives; an endpoint given as a full path (`/pkg.Svc/Method`) is
//! used as is.
//!
//! **Bodies.** `application/grpc` and `application/grpc+proto` are protobuf,
//! `application/grpc+json` JSON; the content type picks the codec on both
//! sides (see [`crate::codec`]).
//!
//! **Metadata, deadlines, errors.** Call metadata travels as gRPC metadata
//! (keys lower-cased, as HTTP/2 requires). The caller's timeout travels as
//! `grpc-timeout` and the server stops the handler when it passes. A micro
//! error becomes a gRPC status whose code maps from the error's HTTP code
//! (as go-micro maps it) and whose message is the error's JSON, which the
//! micro client parses back into the same error; other gRPC servers'
//! statuses come back with their message as the detail.

mod client;
mod server;

pub use client::GrpcClient;
pub use server::GrpcServer;

use bytes::{Buf, BufMut, Bytes};
use micro_core::Error;
use std::collections::HashMap;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Bodies pass through as bytes: micro's codecs, not tonic's, encode them.
#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The gRPC code of a micro error's HTTP code (go-micro's table, plus 429 and 504).
fn grpc_code(http: i32) -> Code {
    match http {
        200 => Code::Ok,
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::AlreadyExists,
        412 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        500 => Code::Internal,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The HTTP code of a gRPC code, for statuses that carry no micro error.
fn http_code(code: Code) -> i32 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::DeadlineExceeded => 408,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::FailedPrecondition => 412,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        _ => 500,
    }
}

/// A micro error as a gRPC status: mapped code, the error's JSON as message.
fn to_status(e: &Error) -> Status {
    Status::new(grpc_code(e.code), e.to_json())
}

/// A gRPC status as a micro error: the micro error in its message when there
/// is one, else the message as the detail of an error with the mapped code.
fn from_status(s: &Status, id: &str) -> Error {
    let parsed = Error::parse(s.message());
    if parsed.code != 0 {
        return parsed;
    }
    Error::new(id, s.message(), http_code(s.code()))
}

/// Headers that belong to gRPC or HTTP/2, not to the call's metadata.
fn is_reserved(key: &str) -> bool {
    matches!(key, "te" | "content-type" | "user-agent" | "accept-encoding" | "content-length")
        || key.starts_with("grpc-")
        || key.starts_with(':')
        || key.ends_with("-bin")
}

/// Call metadata from gRPC metadata (text values only).
fn metadata_of(map: &tonic::metadata::MetadataMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for kv in map.iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
            // `date` is HTTP's, added by servers such as tonic's (not call metadata).
            if !is_reserved(k.as_str()) && k.as_str() != "date" {
                if let Ok(v) = v.to_str() {
                    out.insert(k.as_str().to_string(), v.to_string());
                }
            }
        }
    }
    out
}

/// Puts call metadata into gRPC metadata; keys are lower-cased.
fn put_metadata(map: &mut tonic::metadata::MetadataMap, md: &HashMap<String, String>) -> Result<(), Error> {
    for (k, v) in md {
        let key = tonic::metadata::AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes());
        let value = v.parse::<tonic::metadata::AsciiMetadataValue>();
        match (key, value) {
            (Ok(key), Ok(value)) if !is_reserved(key.as_str()) => {
                map.insert(key, value);
            }
            _ => {
                return Err(Error::bad_request(
                    "go.micro.client",
                    format!(
                        "metadata {k:?} cannot travel as gRPC metadata (keys: lower-case ASCII; values: printable)"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// The `grpc-timeout` header's duration: digits and a unit, e.g. `200m`.
fn parse_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC content type for a micro content type.
fn wire_content_type(ct: &str) -> &str {
    match ct {
        "" | "application/protobuf" | "application/x-protobuf" => "application/grpc+proto",
        "application/json" => crate::codec::GRPC_JSON,
        ct => ct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("5"), None);
        assert_eq!(parse_timeout("99999999999S"), None);
        assert_eq!(parse_timeout("10x"), None);
    }

    #[test]
    fn errors_survive_the_status_round_trip() {
        let e = Error::bad_request("greeter", "name must not be empty");
        let s = to_status(&e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(from_status(&s, "go.micro.client"), e);
        let plain = Status::not_found("no such greeting");
        let back = from_status(&plain, "go.micro.client");
        assert_eq!((back.code, back.detail.as_str()), (404, "no such greeting"));
    }

    /// The whole table both ways, as the README's gRPC section gives it.
    #[test]
    fn the_status_code_table() {
        let both = [
            (400, Code::InvalidArgument),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (408, Code::DeadlineExceeded),
            (409, Code::AlreadyExists),
            (412, Code::FailedPrecondition),
            (429, Code::ResourceExhausted),
            (499, Code::Cancelled),
            (500, Code::Internal),
            (501, Code::Unimplemented),
            (503, Code::Unavailable),
        ];
        for (http, code) in both {
            assert_eq!(grpc_code(http), code, "{http}");
            assert_eq!(http_code(code), http, "{code:?}");
        }
        // One way only.
        assert_eq!(grpc_code(504), Code::DeadlineExceeded);
        for other in [402, 418, 502, 599, 0, 700] {
            assert_eq!(grpc_code(other), Code::Unknown, "{other}");
        }
        assert_eq!(http_code(Code::OutOfRange), 400);
        assert_eq!(http_code(Code::Aborted), 409);
        for other in [Code::Unknown, Code::DataLoss, Code::Internal] {
            assert_eq!(http_code(other), 500, "{other:?}");
        }
        // A micro error survives the round trip whole, whatever its code.
        for code in [400, 418, 503, 599] {
            let e = Error::new("svc", "detail", code);
            assert_eq!(from_status(&to_status(&e), "go.micro.client"), e);
        }
        // A status from another stack becomes an error with the mapped code.
        let e = from_status(&Status::new(Code::ResourceExhausted, "slow down"), "go.micro.client");
        assert_eq!((e.code, e.detail.as_str()), (429, "slow down"));
    }

    #[test]
    fn metadata_keys_are_lowercased_and_reserved_ones_dropped() -> Result<(), Error> {
        let mut map = tonic::metadata::MetadataMap::new();
        put_metadata(&mut map, &HashMap::from([("X-Trace".to_string(), "abc".to_string())]))?;
        map.insert("grpc-timeout", "1S".parse().map_err(|_| Error::internal("t", "value"))?);
        assert_eq!(metadata_of(&map), HashMap::from([("x-trace".to_string(), "abc".to_string())]));
        let bad = put_metadata(&mut map, &HashMap::from([("x".to_string(), "a\nb".to_string())]));
        assert!(bad.is_err_and(|e| e.code == 400 && e.detail.contains("cannot travel as gRPC metadata")));
        Ok(())
    }
}
