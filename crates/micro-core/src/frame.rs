//! micro's message frame: one [`Message`] per length-prefixed frame. The
//! `tcp` transport writes it on the wire, and messages cross the plugin
//! boundary in it, so a socket that speaks it natively skips re-encoding.
//!
//! ```text
//! u32 BE  length of everything after this field
//! u16 BE  number of headers
//! per header: u16 BE key length, key bytes, u32 BE value length, value bytes
//! body    the rest of the frame
//! ```
//! The length is checked against the maximum message size before anything
//! is allocated, so a hostile length prefix costs nothing.

use crate::Message;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is over the limit.
    #[error("frame of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The announced size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The frame ends inside its header block.
    #[error("truncated frame header")]
    Truncated,
    /// A header key or value is not UTF-8.
    #[error("header is not valid UTF-8")]
    BadUtf8,
}

/// Encodes a message into one frame, appended to `out`.
pub fn encode(msg: &Message, out: &mut BytesMut) -> Result<(), FrameError> {
    let mut len = 2usize;
    for (k, v) in &msg.header {
        len += 2 + k.len() + 4 + v.len();
    }
    len += msg.body.len();
    if msg.header.len() > u16::MAX as usize || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { size: len, max: u32::MAX as usize });
    }
    out.reserve(4 + len);
    out.put_u32(len as u32);
    out.put_u16(msg.header.len() as u16);
    for (k, v) in &msg.header {
        if k.len() > u16::MAX as usize {
            return Err(FrameError::TooLarge { size: k.len(), max: u16::MAX as usize });
        }
        out.put_u16(k.len() as u16);
        out.put_slice(k.as_bytes());
        out.put_u32(v.len() as u32);
        out.put_slice(v.as_bytes());
    }
    out.put_slice(&msg.body);
    Ok(())
}

/// Encodes a message into the part of a frame after its length prefix
/// (what [`Socket::send_frame`](crate::Socket::send_frame) takes).
pub fn to_frame(msg: &Message) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::new();
    encode(msg, &mut out)?;
    Ok(out.freeze().slice(4..))
}

/// Checks a length prefix against the limit.
pub fn check_len(len: u32, max: usize) -> Result<usize, FrameError> {
    let size = len as usize;
    if size > max {
        Err(FrameError::TooLarge { size, max })
    } else {
        Ok(size)
    }
}

/// Decodes the part of a frame after its length prefix.
pub fn decode(mut frame: Bytes) -> Result<Message, FrameError> {
    let count = header_count(&frame)?;
    // Each header takes at least 6 bytes (its two length fields): the count
    // in the frame says nothing about what a hostile peer actually sent.
    let mut header = HashMap::with_capacity(count.min(frame.len().saturating_sub(2) / 6));
    let body_at = scan_headers(&frame, |k, v| {
        header.insert(k.to_owned(), v.to_owned());
    })?;
    frame.advance(body_at);
    Ok(Message { header, body: frame })
}

/// Encodes headers given as pairs and a body into the part of a frame after
/// its length prefix (what [`Socket::send_frame`](crate::Socket::send_frame)
/// takes), without building a [`Message`]: the request path uses this to
/// skip a header map per call.
pub fn encode_parts<'a, I>(headers: I, body: &[u8], out: &mut BytesMut) -> Result<(), FrameError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
    I::IntoIter: Clone,
{
    let headers = headers.into_iter();
    let (mut count, mut len) = (0usize, 2usize);
    for (k, v) in headers.clone() {
        if k.len() > u16::MAX as usize {
            return Err(FrameError::TooLarge { size: k.len(), max: u16::MAX as usize });
        }
        count += 1;
        len += 2 + k.len() + 4 + v.len();
    }
    len += body.len();
    if count > u16::MAX as usize || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { size: len, max: u32::MAX as usize });
    }
    out.reserve(len);
    out.put_u16(count as u16);
    for (k, v) in headers {
        out.put_u16(k.len() as u16);
        out.put_slice(k.as_bytes());
        out.put_u32(v.len() as u32);
        out.put_slice(v.as_bytes());
    }
    out.put_slice(body);
    Ok(())
}

/// Decodes the part of a frame after its length prefix, handing each header
/// to `visit` as borrowed strings instead of building a map; returns the body.
pub fn decode_with(mut frame: Bytes, visit: impl FnMut(&str, &str)) -> Result<Bytes, FrameError> {
    let body_at = scan_headers(&frame, visit)?;
    frame.advance(body_at);
    Ok(frame)
}

/// Hands each header of a frame (the part after its length prefix) to
/// `visit`, borrowed from the frame, which stays as it is: for a reader that
/// only needs a header (a reply's id) before passing the frame on. On an
/// error `visit` has seen the headers before the bad one, as with
/// [`decode_with`].
pub fn visit_headers(frame: &[u8], visit: impl FnMut(&str, &str)) -> Result<(), FrameError> {
    scan_headers(frame, visit).map(|_| ())
}

/// The number of headers a frame announces.
fn header_count(frame: &[u8]) -> Result<usize, FrameError> {
    match frame {
        [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo]) as usize),
        _ => Err(FrameError::Truncated),
    }
}

/// Reads a frame's header block from borrowed bytes and returns where its
/// body starts. In place, not split off as `Bytes`: each split is an atomic
/// update of a reference count that all frames of a read batch share while
/// callers on every worker use them, which made it one of the hottest cache
/// lines of a busy client (BENCHMARKS.md).
fn scan_headers(frame: &[u8], mut visit: impl FnMut(&str, &str)) -> Result<usize, FrameError> {
    let count = header_count(frame)?;
    let mut at = 2;
    for _ in 0..count {
        let key = field(frame, &mut at, 2)?;
        let value = field(frame, &mut at, 4)?;
        let key = std::str::from_utf8(key).map_err(|_| FrameError::BadUtf8)?;
        let value = std::str::from_utf8(value).map_err(|_| FrameError::BadUtf8)?;
        visit(key, value);
    }
    Ok(at)
}

/// The field at `at` with a `width`-byte (2 or 4) big-endian length prefix;
/// moves `at` past it.
fn field<'a>(frame: &'a [u8], at: &mut usize, width: usize) -> Result<&'a [u8], FrameError> {
    let rest = frame.get(*at..).unwrap_or_default();
    let len = match (width, rest) {
        (2, [a, b, ..]) => u16::from_be_bytes([*a, *b]) as usize,
        (4, [a, b, c, d, ..]) => u32::from_be_bytes([*a, *b, *c, *d]) as usize,
        _ => return Err(FrameError::Truncated),
    };
    let end = width.checked_add(len).ok_or(FrameError::Truncated)?;
    let value = rest.get(width..end).ok_or(FrameError::Truncated)?;
    *at += end;
    Ok(value)
}

/// Like [`encode_parts`], with the frame's length prefix in front: what
/// [`SocketSender::send_frames`](crate::SocketSender::send_frames) takes,
/// several of them back to back.
pub fn encode_parts_prefixed<'a, I>(headers: I, body: &[u8], out: &mut BytesMut) -> Result<(), FrameError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
    I::IntoIter: Clone,
{
    let start = out.len();
    out.put_u32(0);
    if let Err(e) = encode_parts(headers, body, out) {
        out.truncate(start);
        return Err(e);
    }
    // encode_parts refused anything over u32::MAX.
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends an encoded frame to a batch, with its length prefix (the batch
/// format of [`split_batch`]).
pub fn put_prefixed(out: &mut BytesMut, frame: &[u8]) {
    out.reserve(4 + frame.len());
    out.put_u32(frame.len() as u32);
    out.extend_from_slice(frame);
}

/// Splits a batch of length-prefixed frames (as [`encode_parts_prefixed`]
/// writes them) into the frames, without their prefixes and without copying.
pub fn split_batch(mut batch: Bytes) -> impl Iterator<Item = Result<Bytes, FrameError>> {
    std::iter::from_fn(move || (!batch.is_empty()).then(|| next_in_batch(&mut batch)))
}

/// Takes the first frame of a batch (see [`split_batch`]), without copying,
/// leaving the rest in `batch`; a malformed batch is emptied whole.
pub fn next_in_batch(batch: &mut Bytes) -> Result<Bytes, FrameError> {
    take_prefixed(batch).inspect_err(|_| batch.clear())
}

/// Splits the next frame off a batch, consuming its 4-byte length prefix;
/// the frame stays a view of the batch's buffer.
fn take_prefixed(buf: &mut Bytes) -> Result<Bytes, FrameError> {
    if buf.remaining() < 4 {
        return Err(FrameError::Truncated);
    }
    let len = buf.get_u32() as usize;
    if buf.remaining() < len {
        return Err(FrameError::Truncated);
    }
    Ok(buf.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_count_with_nothing_behind_it_is_truncated() {
        // 65,535 headers announced in a 2-byte frame: no table of that size.
        let e = decode(Bytes::from_static(&[0xff, 0xff])).err();
        assert_eq!(e, Some(FrameError::Truncated));
        let e = decode(Bytes::from_static(&[0xff, 0xff, 0, 1, b'k', 0, 0, 0, 1, b'v'])).err();
        assert_eq!(e, Some(FrameError::Truncated));
    }

    fn sample() -> Message {
        Message::new(&b"hello body"[..])
            .with_header("Micro-Endpoint", "Greeter.Hello")
            .with_header("Content-Type", "application/json")
    }

    #[test]
    fn round_trip() -> Result<(), FrameError> {
        let mut buf = BytesMut::new();
        encode(&sample(), &mut buf)?;
        let mut frame = buf.freeze();
        let len = frame.get_u32() as usize;
        assert_eq!(len, frame.len());
        assert_eq!(decode(frame)?, sample());
        Ok(())
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() -> Result<(), FrameError> {
        let mut buf = BytesMut::new();
        encode(&sample(), &mut buf)?;
        let full = buf.freeze().slice(4..);
        // Cutting into the header block must fail; cutting only the body just shortens it.
        let header_end = full.len() - b"hello body".len();
        for cut in 0..header_end {
            assert!(decode(full.slice(..cut)).is_err(), "cut at {cut}");
        }
        Ok(())
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        assert_eq!(
            check_len(100 * 1024 * 1024, 4 * 1024 * 1024),
            Err(FrameError::TooLarge { size: 100 * 1024 * 1024, max: 4 * 1024 * 1024 })
        );
    }

    #[test]
    fn parts_encode_like_messages_and_decode_without_a_map() -> Result<(), FrameError> {
        let mut buf = BytesMut::new();
        encode_parts(
            [("Micro-Endpoint", "Greeter.Hello"), ("Content-Type", "application/json")],
            b"hello body",
            &mut buf,
        )?;
        assert_eq!(decode(buf.clone().freeze())?, sample());
        let mut seen = Vec::new();
        let body = decode_with(buf.freeze(), |k, v| seen.push(format!("{k}={v}")))?;
        assert_eq!(&body[..], b"hello body");
        assert_eq!(seen, ["Micro-Endpoint=Greeter.Hello", "Content-Type=application/json"]);
        Ok(())
    }

    #[test]
    fn prefixed_frames_batch_and_split() -> Result<(), FrameError> {
        let mut batch = BytesMut::new();
        encode_parts_prefixed([("a", "1")], b"one", &mut batch)?;
        encode_parts_prefixed([("b", "2")], b"two", &mut batch)?;
        let frames = split_batch(batch.freeze()).collect::<Result<Vec<_>, _>>()?;
        assert_eq!(frames.len(), 2);
        assert_eq!(decode(frames[0].clone())?, Message::new(&b"one"[..]).with_header("a", "1"));
        assert_eq!(decode(frames[1].clone())?, Message::new(&b"two"[..]).with_header("b", "2"));
        // A batch cut inside a frame ends in an error, once.
        let cut = split_batch(Bytes::from_static(&[0, 0, 0, 9, 1])).collect::<Vec<_>>();
        assert_eq!(cut, [Err(FrameError::Truncated)]);
        Ok(())
    }

    /// A frame's headers as read, sorted.
    type Headers = Vec<(String, String)>;

    /// What `decode` and `decode_with` make of a frame (headers and body),
    /// and what `visit_headers` makes of it (headers).
    fn read_three_ways(frame: &Bytes) -> [Result<(Headers, Option<Bytes>), FrameError>; 3] {
        let by_map = decode(frame.clone()).map(|m| {
            let mut h: Headers = m.header.into_iter().collect();
            h.sort();
            (h, Some(m.body))
        });
        let mut seen = Vec::new();
        let by_visit = decode_with(frame.clone(), |k, v| seen.push((k.to_string(), v.to_string()))).map(|body| {
            seen.sort();
            (seen, Some(body))
        });
        let mut only = Vec::new();
        let by_borrow = visit_headers(frame, |k, v| only.push((k.to_string(), v.to_string()))).map(|()| {
            only.sort();
            (only, None)
        });
        [by_map, by_visit, by_borrow]
    }

    #[test]
    fn the_three_readers_agree_on_every_cut_and_every_bad_length() -> Result<(), FrameError> {
        let mut buf = BytesMut::new();
        encode_parts([("Micro-Id", "7"), ("Content-Type", "application/json"), ("k", "")], b"the body", &mut buf)?;
        let full = buf.freeze();
        let header_end = full.len() - b"the body".len();
        for cut in 0..=full.len() {
            let frame = full.slice(..cut);
            let [a, b, c] = read_three_ways(&frame);
            assert_eq!(a, b, "decode and decode_with differ at cut {cut}");
            let (b, c) = (b.as_ref().map(|(h, _)| h), c.as_ref().map(|(h, _)| h));
            assert_eq!(b, c, "decode_with and visit_headers differ at cut {cut}");
            assert_eq!(a.is_err(), cut < header_end, "cut {cut}");
        }
        let [a, ..] = read_three_ways(&full);
        let expected = [("Content-Type", "application/json"), ("Micro-Id", "7"), ("k", "")];
        let expected = expected.map(|(k, v)| (k.to_string(), v.to_string())).to_vec();
        assert_eq!(a?, (expected, Some(Bytes::from_static(b"the body"))));
        // Lengths that point past the end, or as far as a u32 reaches; a
        // length cut short wins over bad UTF-8 before it, as it always did.
        for bad in [
            &[0, 1, 0xff, 0xff, b'k'][..],
            &[0, 1, 0, 1, b'k', 0xff, 0xff, 0xff, 0xff, b'v'][..],
            &[0, 1, 0, 1, b'k', 0, 0, 0][..],
            &[0, 2, 0, 1, b'k', 0, 0, 0, 0][..],
            &[0, 1, 0, 1, 0xff, 0, 0][..],
            &[0xff][..],
        ] {
            for r in read_three_ways(&Bytes::copy_from_slice(bad)) {
                assert_eq!(r.err(), Some(FrameError::Truncated), "{bad:?}");
            }
        }
        for r in read_three_ways(&Bytes::from_static(&[0, 1, 0, 1, b'k', 0, 0, 0, 1, 0xc3, b'x'])) {
            assert_eq!(r.err(), Some(FrameError::BadUtf8));
        }
        Ok(())
    }

    #[test]
    fn a_decoded_body_is_the_frames_own_bytes_not_a_copy() -> Result<(), FrameError> {
        let mut buf = BytesMut::new();
        encode_parts([("Micro-Id", "7")], b"the body", &mut buf)?;
        let frame = buf.freeze();
        let body_at = frame.len() - b"the body".len();
        let expected = frame[body_at..].as_ptr();
        assert_eq!(decode_with(frame.clone(), |_, _| {})?.as_ptr(), expected);
        assert_eq!(decode(frame)?.body.as_ptr(), expected);
        Ok(())
    }

    #[test]
    fn bad_utf8_is_refused() {
        let frame = Bytes::from_static(&[0, 1, 0, 1, 0xff, 0, 0, 0, 0]);
        assert_eq!(decode(frame), Err(FrameError::BadUtf8));
    }
}
