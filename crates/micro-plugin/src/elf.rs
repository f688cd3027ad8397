//! Checks a plugin file as ELF before the dynamic loader sees it, and reads
//! its descriptor from the bytes.
//!
//! `dlopen` trusts its input: a library cut short is mapped past the end of
//! its file and the first touch of the missing page is a SIGBUS; a library
//! for another machine gets glibc's misleading "cannot open shared object
//! file". So the loader checks, on the exact bytes it will load: the ELF
//! identification (class, byte order, version), the type (a shared object),
//! the machine, that every program header and every segment's file range is
//! inside the file, and that the dynamic section's addresses lie in loaded
//! segments. Then it finds `MICRO_PLUGIN` through the dynamic symbol table
//! and reads the descriptor from the file (it has no relocations, so those
//! bytes are its value). The `object` crate does the bounds-checked parsing.

use object::elf;
use object::read::elf::{Dyn as _, FileHeader, ProgramHeader, Sym as _};
use object::Endianness;

/// What is wrong with a file, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ElfError {
    /// Not an ELF shared library, or damaged.
    Damaged(String),
    /// A valid ELF file for another machine or word size.
    Foreign {
        /// The file's architecture.
        plugin: String,
        /// The host's.
        host: String,
    },
    /// A valid library without the descriptor symbol.
    NoDescriptor(String),
}

/// Where the descriptor lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// Offset in the file.
    pub(crate) offset: usize,
    /// The symbol's size.
    pub(crate) size: usize,
    /// The size of the entry symbol (looked up in the same table), if exported.
    pub(crate) entry_size: Option<usize>,
}

/// The host's ELF machine, class and byte order.
fn host_machine() -> (u16, u8, u8) {
    let machine = if cfg!(target_arch = "x86_64") {
        elf::EM_X86_64
    } else if cfg!(target_arch = "aarch64") {
        elf::EM_AARCH64
    } else if cfg!(target_arch = "x86") {
        elf::EM_386
    } else if cfg!(target_arch = "arm") {
        elf::EM_ARM
    } else if cfg!(target_arch = "riscv64") || cfg!(target_arch = "riscv32") {
        elf::EM_RISCV
    } else if cfg!(target_arch = "powerpc64") {
        elf::EM_PPC64
    } else if cfg!(target_arch = "s390x") {
        elf::EM_S390
    } else if cfg!(target_arch = "loongarch64") {
        elf::EM_LOONGARCH
    } else {
        elf::EM_NONE
    };
    let class = if cfg!(target_pointer_width = "64") { elf::ELFCLASS64 } else { elf::ELFCLASS32 };
    let data = if cfg!(target_endian = "little") { elf::ELFDATA2LSB } else { elf::ELFDATA2MSB };
    (machine, class, data)
}

/// A machine's name as users know it.
fn machine_name(m: u16) -> String {
    match m {
        elf::EM_X86_64 => "x86_64".into(),
        elf::EM_AARCH64 => "aarch64".into(),
        elf::EM_386 => "x86 (i386)".into(),
        elf::EM_ARM => "arm".into(),
        elf::EM_RISCV => "riscv".into(),
        elf::EM_PPC64 => "powerpc64".into(),
        elf::EM_PPC => "powerpc".into(),
        elf::EM_S390 => "s390x".into(),
        elf::EM_MIPS => "mips".into(),
        elf::EM_LOONGARCH => "loongarch".into(),
        elf::EM_SPARCV9 => "sparc64".into(),
        other => format!("ELF machine {other}"),
    }
}

fn describe(machine: u16, class: u8, data: u8) -> String {
    let bits = if class == elf::ELFCLASS64 { "64-bit" } else { "32-bit" };
    let order = if data == elf::ELFDATA2LSB { "little-endian" } else { "big-endian" };
    format!("{} ({bits}, {order})", machine_name(machine))
}

fn damaged(what: impl Into<String>) -> ElfError {
    ElfError::Damaged(what.into())
}

/// Checks `data` as a shared library for this host and finds `symbol`.
pub(crate) fn check(data: &[u8], symbol: &str, entry: &str) -> Result<Found, ElfError> {
    if data.len() < 4 || data[..4] != elf::ELFMAG {
        return Err(damaged(format!(
            "not an ELF shared library ({})",
            if data.is_empty() { "the file is empty".to_string() } else { "no ELF magic number".to_string() }
        )));
    }
    if data.len() < 20 {
        return Err(damaged(format!("cut short: {} bytes, shorter than an ELF header", data.len())));
    }
    let (class, order, version) = (data[4], data[5], data[6]);
    if !(class == elf::ELFCLASS32 || class == elf::ELFCLASS64) {
        return Err(damaged(format!("invalid ELF class {class}")));
    }
    if !(order == elf::ELFDATA2LSB || order == elf::ELFDATA2MSB) {
        return Err(damaged(format!("invalid ELF byte order {order}")));
    }
    if version != elf::EV_CURRENT {
        return Err(damaged(format!("invalid ELF version {version}")));
    }
    let machine = if order == elf::ELFDATA2LSB {
        u16::from_le_bytes([data[18], data[19]])
    } else {
        u16::from_be_bytes([data[18], data[19]])
    };
    let (host_m, host_class, host_order) = host_machine();
    if (machine, class, order) != (host_m, host_class, host_order) {
        return Err(ElfError::Foreign {
            plugin: describe(machine, class, order),
            host: describe(host_m, host_class, host_order),
        });
    }
    if class != elf::ELFCLASS64 {
        // Only the host's own class gets here; micro's hosts are 64-bit.
        return Err(damaged("32-bit ELF plugins are not supported"));
    }
    check64(data, symbol, entry)
}

fn check64(data: &[u8], symbol: &str, entry: &str) -> Result<Found, ElfError> {
    let bad = |what: &str, e: object::read::Error| damaged(format!("cut short or damaged: {what}: {e}"));
    let header = elf::FileHeader64::<Endianness>::parse(data).map_err(|e| bad("invalid ELF header", e))?;
    let endian = header.endian().map_err(|e| bad("invalid ELF header", e))?;
    if header.e_type(endian) != elf::ET_DYN {
        return Err(damaged(format!("not a shared library (ELF type {})", header.e_type(endian))));
    }
    let len = data.len() as u64;
    let phdrs = header.program_headers(endian, data).map_err(|e| bad("program headers", e))?;
    if phdrs.is_empty() {
        return Err(damaged("no program headers"));
    }
    let mut loads = Vec::new();
    for (i, p) in phdrs.iter().enumerate() {
        let (off, filesz) = (p.p_offset(endian), p.p_filesz(endian));
        let end = off.checked_add(filesz);
        if end.is_none_or(|e| e > len) {
            return Err(damaged(format!(
                "cut short or damaged: segment {i} needs bytes {off}..{} but the file has {len}",
                off.saturating_add(filesz)
            )));
        }
        if p.p_type(endian) == elf::PT_LOAD {
            let (vaddr, memsz) = (p.p_vaddr(endian), p.p_memsz(endian));
            if memsz < filesz || vaddr.checked_add(memsz).is_none() {
                return Err(damaged(format!("segment {i} has an invalid size")));
            }
            loads.push((vaddr, memsz, off, filesz));
        }
    }
    if loads.is_empty() {
        return Err(damaged("no loadable segments"));
    }
    // Every address the dynamic section gives the loader must lie in memory it maps.
    let mapped = |addr: u64, size: u64| {
        loads.iter().any(|&(v, m, _, _)| addr >= v && addr.checked_add(size).is_some_and(|e| e <= v + m))
    };
    let mut dynamic_seen = false;
    for p in phdrs {
        let Some(entries) = p.dynamic(endian, data).map_err(|e| bad("dynamic section", e))? else { continue };
        dynamic_seen = true;
        let val =
            |tag: i64| -> Option<u64> { entries.iter().find(|d| d.d_tag(endian) == tag).map(|d| d.d_val(endian)) };
        for (addr_tag, size_tag) in [
            (elf::DT_STRTAB, Some(elf::DT_STRSZ)),
            (elf::DT_SYMTAB, None),
            (elf::DT_HASH, None),
            (elf::DT_GNU_HASH, None),
            (elf::DT_RELA, Some(elf::DT_RELASZ)),
            (elf::DT_REL, Some(elf::DT_RELSZ)),
            (elf::DT_JMPREL, Some(elf::DT_PLTRELSZ)),
            (elf::DT_INIT_ARRAY, Some(elf::DT_INIT_ARRAYSZ)),
            (elf::DT_FINI_ARRAY, Some(elf::DT_FINI_ARRAYSZ)),
            (elf::DT_INIT, None),
            (elf::DT_FINI, None),
            (elf::DT_VERSYM, None),
            (elf::DT_VERNEED, None),
            (elf::DT_VERDEF, None),
        ] {
            if let Some(addr) = val(addr_tag) {
                let size = size_tag.and_then(val).unwrap_or(1);
                if !mapped(addr, size) {
                    return Err(damaged(format!(
                        "dynamic entry {addr_tag:#x} points at {addr:#x}..+{size}, outside the loaded segments"
                    )));
                }
            }
        }
    }
    if !dynamic_seen {
        return Err(damaged("no dynamic section (a static executable or object file?)"));
    }
    let sections = header.sections(endian, data).map_err(|e| bad("section headers", e))?;
    let symbols = sections.symbols(endian, data, elf::SHT_DYNSYM).map_err(|e| bad("dynamic symbol table", e))?;
    let strings = symbols.strings();
    let defined = |name: &str| {
        symbols.iter().find(|s| {
            s.st_shndx(endian) != elf::SHN_UNDEF && s.name(endian, strings).is_ok_and(|n| n == name.as_bytes())
        })
    };
    let sym = defined(symbol).ok_or_else(|| ElfError::NoDescriptor(format!("no exported `{symbol}` symbol")))?;
    let entry_size = defined(entry).map(|s| s.st_size(endian) as usize);
    let (addr, size) = (sym.st_value(endian), sym.st_size(endian));
    // The symbol's bytes must be file-backed (not .bss): find the segment holding them.
    let offset = loads
        .iter()
        .find(|&&(v, _, _, f)| addr >= v && addr.checked_add(size).is_some_and(|e| e <= v + f))
        .map(|&(v, _, off, _)| off + (addr - v))
        .ok_or_else(|| damaged(format!("symbol `{symbol}` is not stored in the file")))?;
    Ok(Found { offset: offset as usize, size: size as usize, entry_size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_elf_files_are_named_as_such() {
        assert!(matches!(check(b"", "X", "Y"), Err(ElfError::Damaged(m)) if m.contains("empty")));
        assert!(
            matches!(check(b"#!/bin/sh\necho hi\n", "X", "Y"), Err(ElfError::Damaged(m)) if m.contains("no ELF magic"))
        );
        assert!(matches!(check(b"\x7fELF\x02\x01", "X", "Y"), Err(ElfError::Damaged(m)) if m.contains("cut short")));
    }

    #[test]
    fn another_machine_is_named() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&elf::ELFMAG);
        h[4] = elf::ELFCLASS64;
        h[5] = elf::ELFDATA2LSB;
        h[6] = elf::EV_CURRENT;
        let other = if cfg!(target_arch = "aarch64") { elf::EM_X86_64 } else { elf::EM_AARCH64 };
        h[18..20].copy_from_slice(&other.to_le_bytes());
        match check(&h, "X", "Y") {
            Err(ElfError::Foreign { plugin, .. }) => {
                assert_eq!(plugin, describe(other, elf::ELFCLASS64, elf::ELFDATA2LSB))
            }
            other => panic!("{other:?}"),
        }
    }
}
