//! The byte encoding of values that cross the boundary.
//!
//! Little-endian integers, `u32`-length-prefixed strings and byte strings,
//! maps as a count then pairs; registry data as go-micro's JSON. Part of
//! the ABI: a change here bumps [`ABI_VERSION`](crate::abi::ABI_VERSION).

use bytes::Bytes;
use micro_core::{CallOptions, Error, Message, Request, Response};
use std::collections::HashMap;
use std::time::Duration;

const ID: &str = "go.micro.plugin";

/// Encodes values.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer { buf: Vec::with_capacity(64) }
    }
    /// A writer with room for `n` bytes: encoders that know their size
    /// allocate once instead of growing (growth shows up as malloc lock
    /// contention under load).
    pub fn with_capacity(n: usize) -> Self {
        Writer { buf: Vec::with_capacity(n) }
    }
    /// A writer that appends to `buf` (to reuse its capacity).
    pub fn from_vec(buf: Vec<u8>) -> Self {
        Writer { buf }
    }
    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
    /// A u32.
    #[inline]
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A u64.
    #[inline]
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A byte string.
    #[inline]
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }
    /// A string.
    #[inline]
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    /// An optional string (flag byte, then the string).
    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => {
                self.buf.push(1);
                self.str(s)
            }
            None => {
                self.buf.push(0);
                self
            }
        }
    }
    /// A list of strings.
    pub fn strs(&mut self, v: &[String]) -> &mut Self {
        self.u32(v.len() as u32);
        for s in v {
            self.str(s);
        }
        self
    }
    /// A string map.
    pub fn map(&mut self, m: &HashMap<String, String>) -> &mut Self {
        self.u32(m.len() as u32);
        for (k, v) in m {
            self.str(k).str(v);
        }
        self
    }
    /// A duration in nanoseconds (saturating).
    pub fn duration(&mut self, d: Duration) -> &mut Self {
        self.u64(d.as_nanos().min(u64::MAX as u128) as u64)
    }
    /// A JSON value.
    pub fn json<T: serde::Serialize>(&mut self, v: &T) -> &mut Self {
        let data = serde_json::to_vec(v).unwrap_or_default();
        self.bytes(&data)
    }
}

/// Decodes values; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
}

/// Why a read failed. One byte, so that each field's `Result` stays in
/// registers: an [`Error`] is 80 bytes, and a `Result` of one was written
/// and read back through memory for every field of every crossing. The
/// decoders of the hot path work with this and convert once, at the end.
#[derive(Clone, Copy, Debug)]
enum Bad {
    Short,
    NotUtf8,
}

impl From<Bad> for Error {
    fn from(b: Bad) -> Error {
        match b {
            Bad::Short => Error::internal(ID, "truncated value from the other side of the plugin boundary"),
            Bad::NotUtf8 => Error::internal(ID, "string is not UTF-8"),
        }
    }
}

// The small readers and writers are `#[inline]`: they are called across
// crates (the host's proxies), where without it each is a call per field.
impl<'a> Reader<'a> {
    /// Reads `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    /// How many bytes are left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if self.buf.len() < n {
            return Err(Bad::Short);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    #[inline]
    fn get_u32(&mut self) -> Result<u32, Bad> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    #[inline]
    fn get_u64(&mut self) -> Result<u64, Bad> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    #[inline]
    fn get_bytes(&mut self) -> Result<&'a [u8], Bad> {
        let n = self.get_u32()? as usize;
        self.take(n)
    }
    #[inline]
    fn get_str(&mut self) -> Result<&'a str, Bad> {
        std::str::from_utf8(self.get_bytes()?).map_err(|_| Bad::NotUtf8)
    }
    #[inline]
    fn get_string(&mut self) -> Result<String, Bad> {
        self.get_str().map(str::to_owned)
    }
    fn get_opt_string(&mut self) -> Result<Option<String>, Bad> {
        match self.take(1)?[0] {
            0 => Ok(None),
            _ => Ok(Some(self.get_string()?)),
        }
    }
    fn get_map(&mut self) -> Result<HashMap<String, String>, Bad> {
        let n = self.get_u32()? as usize;
        let mut m = HashMap::with_capacity(n.min(1024));
        for _ in 0..n {
            let k = self.get_string()?;
            m.insert(k, self.get_string()?);
        }
        Ok(m)
    }

    /// A u32.
    #[inline]
    pub fn u32(&mut self) -> Result<u32, Error> {
        Ok(self.get_u32()?)
    }
    /// A u64.
    #[inline]
    pub fn u64(&mut self) -> Result<u64, Error> {
        Ok(self.get_u64()?)
    }
    /// A byte string.
    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], Error> {
        Ok(self.get_bytes()?)
    }
    /// A string.
    #[inline]
    pub fn string(&mut self) -> Result<String, Error> {
        Ok(self.get_string()?)
    }
    /// A string, borrowed from the buffer (no copy).
    #[inline]
    pub fn str(&mut self) -> Result<&'a str, Error> {
        Ok(self.get_str()?)
    }
    /// An optional string.
    pub fn opt_string(&mut self) -> Result<Option<String>, Error> {
        Ok(self.get_opt_string()?)
    }
    /// An optional string, borrowed from the buffer (no copy).
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, Error> {
        match self.take(1)?[0] {
            0 => Ok(None),
            _ => Ok(Some(self.str()?)),
        }
    }
    /// A list of strings.
    pub fn strings(&mut self) -> Result<Vec<String>, Error> {
        let n = self.u32()? as usize;
        let mut v = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            v.push(self.string()?);
        }
        Ok(v)
    }
    /// A string map.
    pub fn map(&mut self) -> Result<HashMap<String, String>, Error> {
        Ok(self.get_map()?)
    }
    /// A duration.
    pub fn duration(&mut self) -> Result<Duration, Error> {
        Ok(Duration::from_nanos(self.u64()?))
    }
    /// A JSON value.
    pub fn json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, Error> {
        let b = self.bytes()?;
        serde_json::from_slice(b).map_err(|e| Error::internal(ID, format!("bad JSON across the plugin boundary: {e}")))
    }
}

/// The encoded size of a string map.
pub fn map_len(m: &HashMap<String, String>) -> usize {
    4 + m.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>()
}

/// Encodes a message.
pub fn put_message(w: &mut Writer, m: &Message) {
    w.map(&m.header).bytes(&m.body);
}

/// Decodes a message.
pub fn get_message(r: &mut Reader<'_>) -> Result<Message, Error> {
    let header = r.map()?;
    let body = Bytes::copy_from_slice(r.bytes()?);
    Ok(Message { header, body })
}

/// The encoded size of a request.
pub fn request_len(q: &Request) -> usize {
    12 + q.service.len() + q.endpoint.len() + q.content_type.len() + map_len(&q.metadata) + 4 + q.body.len()
}

/// The encoded size of a response.
pub fn response_len(p: &Response) -> usize {
    4 + p.content_type.len() + map_len(&p.metadata) + 4 + p.body.len()
}

/// Encodes a node (binary: it crosses on every selection).
pub fn put_node(w: &mut Writer, n: &micro_core::Node) {
    w.str(&n.id).str(&n.address).map(&n.metadata);
}

/// Decodes a node.
pub fn get_node(r: &mut Reader<'_>) -> Result<micro_core::Node, Error> {
    Ok(micro_core::Node { id: r.string()?, address: r.string()?, metadata: r.map()? })
}

/// How a selector's choice crosses (see [`put_candidates`]).
const RANDOM: u32 = 0;
const ROUND_ROBIN: u32 = 1;

/// Encodes a selector's candidates: the choice, then the nodes. `false`
/// (nothing written) for a choice this side cannot name, which the other
/// side would not know either.
pub fn put_candidates(w: &mut Writer, c: &micro_core::Candidates) -> bool {
    let choice = match c.choice {
        micro_core::Choice::Random => RANDOM,
        micro_core::Choice::RoundRobin => ROUND_ROBIN,
        _ => return false,
    };
    w.u32(choice).u32(c.nodes.len() as u32);
    for n in &c.nodes {
        put_node(w, n);
    }
    true
}

/// Decodes a selector's candidates; `None` for a choice of a newer peer
/// (the caller then selects per call).
pub fn get_candidates(r: &mut Reader<'_>) -> Result<Option<micro_core::Candidates>, Error> {
    let choice = match r.u32()? {
        RANDOM => micro_core::Choice::Random,
        ROUND_ROBIN => micro_core::Choice::RoundRobin,
        _ => return Ok(None),
    };
    let n = r.u32()? as usize;
    // Room for what the bytes can hold (a node takes at least 12), not for
    // what the count says.
    let mut nodes = Vec::with_capacity(n.min(r.remaining() / 12));
    for _ in 0..n {
        nodes.push(std::sync::Arc::new(get_node(r)?));
    }
    Ok(Some(micro_core::Candidates { nodes, choice }))
}

/// Encodes a request.
pub fn put_request(w: &mut Writer, q: &Request) {
    w.str(&q.service).str(&q.endpoint).str(&q.content_type).map(&q.metadata).bytes(&q.body);
}

/// Decodes a request.
pub fn get_request(r: &mut Reader<'_>) -> Result<Request, Error> {
    let mut read = || -> Result<Request, Bad> {
        Ok(Request {
            service: r.get_string()?,
            endpoint: r.get_string()?,
            content_type: r.get_string()?,
            metadata: r.get_map()?,
            body: Bytes::copy_from_slice(r.get_bytes()?),
        })
    };
    Ok(read()?)
}

/// Encodes a response.
pub fn put_response(w: &mut Writer, p: &Response) {
    w.str(&p.content_type).map(&p.metadata).bytes(&p.body);
}

/// Decodes a response.
pub fn get_response(r: &mut Reader<'_>) -> Result<Response, Error> {
    get_response_to(r, String::new())
}

/// Decodes a response to a request of content type `asked`, which is taken
/// rather than copied when the response has the same (nearly always).
pub fn get_response_to(r: &mut Reader<'_>, asked: String) -> Result<Response, Error> {
    let read = || -> Result<Response, Bad> {
        let ct = r.get_str()?;
        let content_type = if ct == asked { asked } else { ct.to_owned() };
        Ok(Response { content_type, metadata: r.get_map()?, body: Bytes::copy_from_slice(r.get_bytes()?) })
    };
    Ok(read()?)
}

/// Encodes call options.
pub fn put_call_options(w: &mut Writer, o: &CallOptions) {
    w.u64(timeout_word(o.timeout));
    w.u64(retries_word(o.retries));
    w.opt_str(o.address.as_deref());
}

/// A call's timeout as it crosses: nanoseconds plus one, 0 for none.
pub(crate) fn timeout_word(t: Option<Duration>) -> u64 {
    t.map(|t| t.as_nanos().min(u64::MAX as u128 - 1) as u64 + 1).unwrap_or(0)
}

/// A timeout written by [`timeout_word`].
pub(crate) fn timeout_of(w: u64) -> Option<Duration> {
    (w > 0).then(|| Duration::from_nanos(w - 1))
}

/// A call's retries as they cross: plus one, 0 for none.
pub(crate) fn retries_word(n: Option<u32>) -> u64 {
    n.map(|r| r as u64 + 1).unwrap_or(0)
}

/// Retries written by [`retries_word`].
pub(crate) fn retries_of(w: u64) -> Option<u32> {
    (w > 0).then(|| (w - 1) as u32)
}

/// Decodes call options.
pub fn get_call_options(r: &mut Reader<'_>) -> Result<CallOptions, Error> {
    let mut read = || -> Result<CallOptions, Bad> {
        let t = r.get_u64()?;
        let n = r.get_u64()?;
        Ok(CallOptions { timeout: timeout_of(t), retries: retries_of(n), address: r.get_opt_string()? })
    };
    Ok(read()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_round_trip_and_a_count_is_not_trusted() -> Result<(), Error> {
        let node = |id: &str| micro_core::Node { id: id.into(), address: "127.0.0.1:1".into(), ..Default::default() };
        let c = micro_core::Candidates {
            nodes: vec![std::sync::Arc::new(node("a")), std::sync::Arc::new(node("b"))],
            choice: micro_core::Choice::RoundRobin,
        };
        let mut w = Writer::new();
        assert!(put_candidates(&mut w, &c));
        assert_eq!(get_candidates(&mut Reader::new(&w.finish()))?, Some(c));
        // A choice of a newer peer: none taken.
        let mut w = Writer::new();
        w.u32(7).u32(0);
        assert_eq!(get_candidates(&mut Reader::new(&w.finish()))?, None);
        // Four billion nodes announced, one there: an error, not a huge allocation.
        let mut w = Writer::new();
        w.u32(RANDOM).u32(u32::MAX);
        put_node(&mut w, &node("a"));
        assert!(get_candidates(&mut Reader::new(&w.finish())).is_err());
        Ok(())
    }

    #[test]
    fn a_response_takes_the_request_content_type_when_they_match() -> Result<(), Error> {
        let resp =
            Response { content_type: "application/json".into(), body: Bytes::from_static(b"{}"), ..Default::default() };
        let mut w = Writer::new();
        put_response(&mut w, &resp);
        let bytes = w.finish();
        let asked = String::from("application/json");
        let at = asked.as_ptr();
        let got = get_response_to(&mut Reader::new(&bytes), asked)?;
        assert_eq!(got.content_type, "application/json");
        assert_eq!(got.content_type.as_ptr(), at, "taken, not copied");
        assert_eq!(&got.body[..], b"{}");
        let other = get_response_to(&mut Reader::new(&bytes), "application/protobuf".into())?;
        assert_eq!(other.content_type, "application/json", "a different one is the response's own");
        Ok(())
    }

    #[test]
    fn a_shared_buffer_crosses_by_reference_and_is_released() {
        let shared: std::sync::Arc<[u8]> = vec![1u8, 2, 3].into();
        let buf = crate::abi::FfiBuf::from_shared(shared.clone());
        assert_eq!(buf.as_slice(), &[1, 2, 3]);
        assert_eq!(buf.as_slice().as_ptr(), shared.as_ptr(), "no copy");
        assert_eq!(std::sync::Arc::strong_count(&shared), 2);
        drop(buf);
        assert_eq!(std::sync::Arc::strong_count(&shared), 1, "the receiver's drop gives the reference back");
    }

    #[test]
    fn round_trips() -> Result<(), Error> {
        let req = Request {
            service: "s".into(),
            endpoint: "A.B".into(),
            content_type: "application/json".into(),
            body: Bytes::from_static(b"{}"),
            metadata: [("k".to_string(), "v".to_string())].into_iter().collect(),
        };
        let mut w = Writer::new();
        put_request(&mut w, &req);
        let opts = CallOptions { timeout: Some(Duration::from_millis(5)), retries: Some(0), address: None };
        put_call_options(&mut w, &opts);
        let data = w.finish();
        let mut r = Reader::new(&data);
        assert_eq!(get_request(&mut r)?, req);
        assert_eq!(get_call_options(&mut r)?, opts);
        Ok(())
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut w = Writer::new();
        w.str("hello").map(&HashMap::new());
        let data = w.finish();
        for cut in 0..data.len() {
            let mut r = Reader::new(&data[..cut]);
            assert!(r.string().and_then(|_| r.map()).is_err(), "cut {cut}");
        }
    }
}
