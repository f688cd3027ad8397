//! The TCP transport's frame decoder and header parser on arbitrary bytes:
//! never a panic, and what decodes re-encodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use micro::transport::frame;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let _ = frame::check_len(len, 4 * 1024 * 1024);
    }
    if let Ok(msg) = frame::decode(bytes::Bytes::copy_from_slice(data)) {
        let mut out = bytes::BytesMut::new();
        if frame::encode(&msg, &mut out).is_ok() {
            let again = frame::decode(out.freeze().slice(4..)).expect("a re-encoded frame decodes");
            assert_eq!(again, msg);
        }
    }
});
