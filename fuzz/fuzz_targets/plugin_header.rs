//! The loader's checks of a plugin file on arbitrary bytes: the ELF parser
//! and the descriptor checks (`check_bytes`, everything the loader does
//! before `dlopen`) answer any input with an error or a descriptor, never a
//! panic, and accept only the host's own ABI, layout and target.
#![no_main]
use libfuzzer_sys::fuzz_target;
use micro_plugin::loader::{check_bytes, BuildInfo, LoadOptions};

fuzz_target!(|data: &[u8]| {
    let verdict = check_bytes(std::path::Path::new("fuzz.so"), data, LoadOptions::default());
    if let Ok(d) = verdict {
        let host = BuildInfo::host();
        assert_eq!(d.magic, micro_plugin::abi::MAGIC);
        assert_eq!((d.abi_version, d.future_abi_version), (host.abi_version, host.future_abi_version));
        assert_eq!(micro_plugin::abi::fixed_str(&d.target), host.target);
    }
});
