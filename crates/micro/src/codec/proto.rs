//! Protocol Buffers bodies through prost.
//!
//! Codecs are serde-based (object-safe through erased-serde), and prost
//! messages are not serde types; so a prost message travels wrapped in
//! [`Proto`], whose serde form is "the message's protobuf bytes". The
//! protobuf codec's serializer accepts exactly that (and reports itself as
//! not human-readable), so typed handlers and clients work unchanged with
//! `Proto<HelloRequest>` in place of a serde type:
//!
//! ```
//! # use micro::codec::Proto;
//! #[derive(Clone, PartialEq, prost::Message)]
//! struct Hello {
//!     #[prost(string, tag = "1")]
//!     name: String,
//! }
//! let codec = micro::codec::ProtoCodec::new("application/grpc");
//! let bytes = micro::core::codec::encode(&codec, &Proto(Hello { name: "Alice".into() }))?;
//! let back: Proto<Hello> = micro::core::codec::decode(&codec, &bytes)?;
//! assert_eq!(back.0.name, "Alice");
//! # Ok::<(), micro::core::Error>(())
//! ```

use bytes::Bytes;
use micro_core::{Codec, Error, Result};
use serde::ser::{self, Impossible, Serialize, Serializer};
use std::fmt;

/// The content types the protobuf codec is registered under.
pub const PROTO_TYPES: [&str; 4] =
    ["application/grpc", "application/grpc+proto", "application/protobuf", "application/x-protobuf"];

/// A prost message as a codec value: encoded as protobuf by the protobuf
/// codec. (JSON codecs refuse it; for JSON use a serde type, or derive serde
/// on the generated type and use it directly.)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proto<T>(pub T);

impl<T: prost::Message> Serialize for Proto<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return Err(ser::Error::custom(format!(
                "{} is a protobuf message: call with a protobuf content type ({})",
                short_name::<T>(),
                PROTO_TYPES.join(", ")
            )));
        }
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de, T: prost::Message + Default> serde::Deserialize<'de> for Proto<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: prost::Message + Default> serde::de::Visitor<'_> for V<T> {
            type Value = Proto<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "the protobuf encoding of {}", short_name::<T>())
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Proto<T>, E> {
                T::decode(v).map(Proto).map_err(|e| E::custom(format!("protobuf {}: {e}", short_name::<T>())))
            }
        }
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

fn short_name<T>() -> &'static str {
    let n = std::any::type_name::<T>();
    n.rsplit("::").next().unwrap_or(n)
}

/// Protobuf bodies: values of [`Proto<T>`] for prost messages `T`.
#[derive(Debug, Clone, Copy)]
pub struct ProtoCodec {
    content_type: &'static str,
}

impl ProtoCodec {
    /// The codec under one content type, e.g. `application/grpc`.
    pub fn new(content_type: &'static str) -> Self {
        ProtoCodec { content_type }
    }
}

impl Codec for ProtoCodec {
    fn content_type(&self) -> &str {
        self.content_type
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Bytes> {
        value.serialize(BytesOnly).map_err(|e| Error::internal("go.micro.codec", format!("protobuf encode: {}", e.0)))
    }

    fn decode_with(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        let de = serde::de::value::BorrowedBytesDeserializer::<serde::de::value::Error>::new(data);
        let mut erased = <dyn erased_serde::Deserializer>::erase(de);
        visit(&mut erased).map_err(|e| {
            Error::bad_request(
                "go.micro.codec",
                format!(
                    "protobuf decode: {e} (protobuf bodies decode into prost messages wrapped in micro::codec::Proto)"
                ),
            )
        })
    }
}

/// The serializer's error.
#[derive(Debug)]
struct NotProto(String);

impl fmt::Display for NotProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NotProto {}
impl ser::Error for NotProto {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NotProto(msg.to_string())
    }
}

fn not_proto<T>() -> std::result::Result<T, NotProto> {
    Err(NotProto(
        "only prost messages wrapped in micro::codec::Proto can be encoded as protobuf; \
         for serde types use a JSON content type"
            .into(),
    ))
}

/// A serializer that accepts one byte string (what [`Proto`] serializes to).
struct BytesOnly;

macro_rules! refuse {
    ($($name:ident($($t:ty),*) -> $ret:ty;)*) => {
        $(fn $name(self, $(_: $t),*) -> std::result::Result<$ret, NotProto> { not_proto() })*
    };
}

impl Serializer for BytesOnly {
    type Ok = Bytes;
    type Error = NotProto;
    type SerializeSeq = Impossible<Bytes, NotProto>;
    type SerializeTuple = Impossible<Bytes, NotProto>;
    type SerializeTupleStruct = Impossible<Bytes, NotProto>;
    type SerializeTupleVariant = Impossible<Bytes, NotProto>;
    type SerializeMap = Impossible<Bytes, NotProto>;
    type SerializeStruct = Impossible<Bytes, NotProto>;
    type SerializeStructVariant = Impossible<Bytes, NotProto>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bytes(self, v: &[u8]) -> std::result::Result<Bytes, NotProto> {
        Ok(Bytes::copy_from_slice(v))
    }

    refuse! {
        serialize_bool(bool) -> Bytes;
        serialize_i8(i8) -> Bytes;
        serialize_i16(i16) -> Bytes;
        serialize_i32(i32) -> Bytes;
        serialize_i64(i64) -> Bytes;
        serialize_u8(u8) -> Bytes;
        serialize_u16(u16) -> Bytes;
        serialize_u32(u32) -> Bytes;
        serialize_u64(u64) -> Bytes;
        serialize_f32(f32) -> Bytes;
        serialize_f64(f64) -> Bytes;
        serialize_char(char) -> Bytes;
        serialize_str(&str) -> Bytes;
        serialize_none() -> Bytes;
        serialize_unit() -> Bytes;
        serialize_unit_struct(&'static str) -> Bytes;
        serialize_unit_variant(&'static str, u32, &'static str) -> Bytes;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> std::result::Result<Bytes, NotProto> {
        not_proto()
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> std::result::Result<Bytes, NotProto> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<Bytes, NotProto> {
        not_proto()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::codec::{decode, encode};
    use prost::Message as _;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Hello {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(uint64, tag = "2")]
        n: u64,
    }

    #[test]
    fn prost_messages_round_trip_as_protobuf() -> Result<()> {
        let c = ProtoCodec::new("application/grpc");
        let v = Proto(Hello { name: "Alice".into(), n: 3 });
        let bytes = encode(&c, &v)?;
        assert_eq!(&bytes[..], &v.0.encode_to_vec()[..], "the body is plain protobuf");
        assert_eq!(decode::<Proto<Hello>>(&c, &bytes)?, v);
        Ok(())
    }

    #[test]
    fn mixing_up_codecs_and_types_is_a_clear_error() {
        let c = ProtoCodec::new("application/grpc");
        let e = encode(&c, &"a serde string").err().map(|e| e.detail).unwrap_or_default();
        assert!(e.contains("only prost messages wrapped in micro::codec::Proto"), "{e}");
        let e = decode::<std::collections::HashMap<String, String>>(&c, b"\x0a\x01a")
            .err()
            .map(|e| e.detail)
            .unwrap_or_default();
        assert!(e.contains("protobuf decode"), "{e}");
        let json = super::super::JsonCodec::default();
        let e = encode(&json, &Proto(Hello::default())).err().map(|e| e.detail).unwrap_or_default();
        assert!(e.contains("Hello is a protobuf message"), "{e}");
        let e = decode::<Proto<Hello>>(&c, b"\xff\xff").err().map(|e| e.detail).unwrap_or_default();
        assert!(e.contains("protobuf Hello"), "{e}");
    }
}

/// A prost message that also derives serde (as `micro-build` generates
/// them), as a codec value: protobuf bytes under the protobuf content
/// types, the serde form under JSON. So a generated service answers a
/// generated client in protobuf and `micro call` or the API gateway in
/// JSON, with the same handler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProtoJson<T>(pub T);

impl<T: prost::Message + Serialize> Serialize for ProtoJson<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            s.serialize_bytes(&self.0.encode_to_vec())
        }
    }
}

impl<'de, T: prost::Message + Default + serde::de::DeserializeOwned> serde::Deserialize<'de> for ProtoJson<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: prost::Message + Default + serde::de::DeserializeOwned> serde::de::Visitor<'de> for V<T> {
            type Value = ProtoJson<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} as protobuf bytes or a JSON object", short_name::<T>())
            }
            // The protobuf codec hands over the body's bytes.
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<ProtoJson<T>, E> {
                T::decode(v).map(ProtoJson).map_err(|e| E::custom(format!("protobuf {}: {e}", short_name::<T>())))
            }
            // JSON: an object, read by the message's own serde derive.
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<ProtoJson<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ProtoJson)
            }
            // `null`, or no body: the empty message.
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<ProtoJson<T>, E> {
                Ok(ProtoJson(T::default()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}
