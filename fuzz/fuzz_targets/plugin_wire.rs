//! The byte encoding of values crossing the plugin boundary, decoded from
//! arbitrary bytes: never a panic, whatever the other side sends.
#![no_main]
use libfuzzer_sys::fuzz_target;
use micro_plugin::wire::{self, Reader};

fuzz_target!(|data: &[u8]| {
    let _ = wire::get_message(&mut Reader::new(data));
    let _ = wire::get_request(&mut Reader::new(data));
    let _ = wire::get_response(&mut Reader::new(data));
    let _ = wire::get_call_options(&mut Reader::new(data));
    let _ = wire::get_node(&mut Reader::new(data));
    let _ = wire::get_candidates(&mut Reader::new(data));
    let _ = micro_plugin::options::decode_registry(data, Vec::new());
    let _ = micro_plugin::options::decode_transport(data, Vec::new());
});
