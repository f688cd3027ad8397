//! The plugin descriptor header check on arbitrary header contents: the
//! loader's verdict for any magic number, versions and build strings is an
//! error or a match, never a panic, and only the host's own values pass.
#![no_main]
use libfuzzer_sys::fuzz_target;
use micro_plugin::loader::{check_header, BuildInfo};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let magic = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
    let abi = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    let fut = u32::from_le_bytes(data[12..16].try_into().expect("4 bytes"));
    let text = String::from_utf8_lossy(&data[16..]);
    let mut parts = text.splitn(3, '\n');
    let build = BuildInfo {
        abi_version: abi,
        future_abi_version: fut,
        rustc: parts.next().unwrap_or("").to_string(),
        target: parts.next().unwrap_or("").to_string(),
        framework: parts.next().unwrap_or("").to_string(),
    };
    let host = BuildInfo::host();
    let verdict = check_header(std::path::Path::new("fuzz.so"), magic, Some(&build));
    if verdict.is_ok() {
        assert_eq!(magic, micro_plugin::abi::MAGIC);
        assert_eq!((build.abi_version, build.future_abi_version, &build.target), (host.abi_version, host.future_abi_version, &host.target));
    }
});
