//! Registry records (go-micro's JSON) and errors from arbitrary bytes:
//! never a panic; a record that parses survives a round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use micro_core::{Error, Service};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = serde_json::from_slice::<Service>(data) {
        let again: Service = serde_json::from_slice(&serde_json::to_vec(&s).expect("encode")).expect("decode");
        assert_eq!(again, s);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Error::parse(text);
    }
});
