use bytes::Bytes;
use micro_core::{Codec, Error, Result};

/// JSON bodies through serde_json, under `application/json` (and, for
/// gRPC, `application/grpc+json`).
#[derive(Debug, Clone, Copy)]
pub struct JsonCodec {
    content_type: &'static str,
}

impl Default for JsonCodec {
    fn default() -> Self {
        JsonCodec { content_type: super::JSON }
    }
}

impl JsonCodec {
    /// The JSON codec under another content type.
    pub fn with_content_type(content_type: &'static str) -> Self {
        JsonCodec { content_type }
    }
}

impl Codec for JsonCodec {
    fn content_type(&self) -> &str {
        self.content_type
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Bytes> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| Error::internal("go.micro.codec", format!("json encode: {e}")))
    }

    fn decode_with(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        let bad = |e: &dyn std::fmt::Display| Error::bad_request("go.micro.codec", format!("json decode: {e}"));
        let mut de = serde_json::Deserializer::from_slice(data);
        {
            let mut erased = <dyn erased_serde::Deserializer>::erase(&mut de);
            visit(&mut erased).map_err(|e| bad(&e))?;
        }
        // Trailing garbage after the value is an error, as with serde_json::from_slice.
        de.end().map_err(|e| bad(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::codec::{decode, encode};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Hello {
        name: String,
        n: u32,
    }

    #[test]
    fn round_trip() -> Result<()> {
        let v = Hello { name: "John".into(), n: 3 };
        let bytes = encode(&JsonCodec::default(), &v)?;
        assert_eq!(&bytes[..], br#"{"name":"John","n":3}"#);
        assert_eq!(decode::<Hello>(&JsonCodec::default(), &bytes)?, v);
        Ok(())
    }

    #[test]
    fn bad_input_is_a_400() {
        let e = decode::<Hello>(&JsonCodec::default(), b"{\"name\":1}").err();
        assert_eq!(e.map(|e| e.code), Some(400));
        let e = decode::<Hello>(&JsonCodec::default(), br#"{"name":"a","n":1} x"#).err();
        assert_eq!(e.map(|e| e.code), Some(400));
    }

    #[test]
    fn codecs_table_ignores_parameters_and_lists_known_types() {
        let codecs = crate::codec::builtin();
        assert!(codecs.get("application/json; charset=utf-8").is_ok());
        let e = codecs.get("application/x-nope").err().map(|e| e.detail).unwrap_or_default();
        assert!(e.contains("application/json"), "{e}");
    }
}
