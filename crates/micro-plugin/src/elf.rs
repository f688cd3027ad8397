//! Checks a plugin file as ELF before the dynamic loader sees it, and reads
//! its descriptor from the bytes.
//!
//! `dlopen` trusts its input: a library cut short is mapped past the end of
//! its file and the first touch of the missing page is a SIGBUS; a library
//! for another machine gets glibc's misleading "cannot open shared object
//! file". So the loader checks, on the exact bytes it will load: the ELF
//! identification (class, byte order, version), the type (a shared object),
//! the machine, that every program header and every segment's file range is
//! inside the file, that the segments the loader reads (dynamic, notes, TLS,
//! properties, unwind table) lie where a loadable segment maps their own
//! bytes (RELRO, only protected, in mapped memory), that the dynamic
//! section's addresses lie in loaded segments, the dynamic section as glibc
//! reads it (to its end marker, the last entry of a tag counting, the sizes
//! it asserts), and every table it walks while loading: relocations,
//! strings, symbols, hash tables and symbol versions (see [`Tables`]). Then
//! it finds `MICRO_PLUGIN` through the dynamic symbol table
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
            let writable = p.p_flags(endian) & elf::PF_W != 0;
            loads.push(Load { vaddr, memsz, offset: off, filesz, writable });
        }
    }
    if loads.is_empty() {
        return Err(damaged("no loadable segments"));
    }
    let image = Image { data, loads };
    // The loader reads these segments at their addresses, not their file
    // offsets: each must lie where a loadable segment maps the same bytes.
    for (i, p) in phdrs.iter().enumerate() {
        let kind = p.p_type(endian);
        let Some(name) = read_by_loader(kind) else { continue };
        let (vaddr, memsz, off, filesz) =
            (p.p_vaddr(endian), p.p_memsz(endian), p.p_offset(endian), p.p_filesz(endian));
        // RELRO is only protected, never read: a post-link optimiser (BOLT)
        // counts zero-filled padding in its file size.
        if filesz > 0 && kind != elf::PT_GNU_RELRO && image.file_offset(vaddr, filesz) != Some(off) {
            return Err(damaged(format!(
                "segment {i} ({name}) is not loaded from its own bytes: its address {vaddr:#x} does not map file offset {off:#x}"
            )));
        }
        // A TLS segment's zero-filled part is a template, not mapped memory.
        if kind != elf::PT_TLS && memsz > 0 && !image.mapped(vaddr, memsz) {
            return Err(damaged(format!(
                "segment {i} ({name}) at {vaddr:#x}..+{memsz} lies outside the loaded segments"
            )));
        }
        // The loader walks the property notes by the sizes they state.
        if kind == elf::PT_GNU_PROPERTY && p.p_align(endian) == 8 {
            image.notes(vaddr, filesz).map_err(|e| damaged(format!("segment {i} ({name}): {e}")))?;
        }
    }
    let mut dynamic_seen = false;
    for p in phdrs {
        let Some(entries) = p.dynamic(endian, data).map_err(|e| bad("dynamic section", e))? else { continue };
        dynamic_seen = true;
        // As the loader reads them: up to the end marker, which must be
        // there (else it reads on past the segment), the last entry of a
        // tag counting.
        let end = entries
            .iter()
            .position(|d| d.d_tag(endian) == elf::DT_NULL)
            .ok_or_else(|| damaged("the dynamic section has no end marker (DT_NULL)"))?;
        let dynamic = Dynamic(entries[..end].iter().map(|d| (d.d_tag(endian), d.d_val(endian))).collect());
        // Every address the dynamic section gives the loader must lie in memory it maps.
        for (addr_tag, size_tag) in [
            (elf::DT_STRTAB, Some(elf::DT_STRSZ)),
            (elf::DT_SYMTAB, None),
            (elf::DT_HASH, None),
            (elf::DT_GNU_HASH, None),
            (elf::DT_RELA, Some(elf::DT_RELASZ)),
            (elf::DT_REL, Some(elf::DT_RELSZ)),
            (elf::DT_RELR, Some(elf::DT_RELRSZ)),
            (elf::DT_JMPREL, Some(elf::DT_PLTRELSZ)),
            (elf::DT_INIT_ARRAY, Some(elf::DT_INIT_ARRAYSZ)),
            (elf::DT_FINI_ARRAY, Some(elf::DT_FINI_ARRAYSZ)),
            (elf::DT_INIT, None),
            (elf::DT_FINI, None),
            (elf::DT_VERSYM, None),
            (elf::DT_VERNEED, None),
            (elf::DT_VERDEF, None),
        ] {
            if let Some(addr) = dynamic.get(addr_tag) {
                let size = size_tag.and_then(|t| dynamic.get(t)).unwrap_or(1);
                if !image.mapped(addr, size) {
                    return Err(damaged(format!(
                        "dynamic entry {addr_tag:#x} points at {addr:#x}..+{size}, outside the loaded segments"
                    )));
                }
            }
        }
        Tables::new(&image, &dynamic)?.check(&dynamic)?;
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
    // The symbol's bytes must be file-backed (not .bss).
    let offset =
        image.file_offset(addr, size).ok_or_else(|| damaged(format!("symbol `{symbol}` is not stored in the file")))?;
    Ok(Found { offset: offset as usize, size: size as usize, entry_size })
}

/// The program headers that the dynamic loader reads the contents of, by name.
fn read_by_loader(kind: u32) -> Option<&'static str> {
    Some(match kind {
        elf::PT_DYNAMIC => "dynamic",
        elf::PT_NOTE => "note",
        elf::PT_TLS => "thread-local data",
        elf::PT_INTERP => "interpreter",
        elf::PT_GNU_EH_FRAME => "unwind table",
        elf::PT_GNU_PROPERTY => "properties",
        elf::PT_GNU_RELRO => "read-only after relocation",
        _ => return None,
    })
}

/// A loadable segment.
#[derive(Debug, Clone, Copy)]
struct Load {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
    writable: bool,
}

/// The file as the loader will map it: addresses to bytes. Only the
/// host's byte order gets here (`check`), so values read natively.
struct Image<'a> {
    data: &'a [u8],
    loads: Vec<Load>,
}

impl Image<'_> {
    /// The segment whose memory holds `addr..addr + size`.
    fn load_of(&self, addr: u64, size: u64) -> Option<&Load> {
        let end = addr.checked_add(size)?;
        // `vaddr + memsz` cannot overflow: checked when the segment was read.
        self.loads.iter().find(|l| addr >= l.vaddr && end <= l.vaddr + l.memsz)
    }

    /// Whether `addr..addr + size` is memory the loader maps.
    fn mapped(&self, addr: u64, size: u64) -> bool {
        self.load_of(addr, size).is_some()
    }

    /// Whether `addr..addr + size` may be written while relocating.
    fn writable(&self, addr: u64, size: u64, text_relocations: bool) -> bool {
        self.load_of(addr, size).is_some_and(|l| l.writable || text_relocations)
    }

    /// The file offset of the bytes mapped at `addr..addr + size`, if they
    /// all come from the file (not the zero-filled tail of a segment).
    fn file_offset(&self, addr: u64, size: u64) -> Option<u64> {
        let end = addr.checked_add(size)?;
        // `offset + filesz` is inside the file: checked when the segment was read.
        let l = self.loads.iter().find(|l| addr >= l.vaddr && end <= l.vaddr + l.filesz)?;
        Some(l.offset + (addr - l.vaddr))
    }

    /// The file's bytes mapped at `addr..addr + size`.
    fn bytes(&self, addr: u64, size: u64) -> Option<&[u8]> {
        let at = self.file_offset(addr, size)? as usize;
        self.data.get(at..at.checked_add(usize::try_from(size).ok()?)?)
    }

    /// Notes that fill `addr..addr + size`, walked as the loader walks
    /// property notes: a 12-byte header, the name, the description at the
    /// next multiple of 8, the next note at the one after it. Each
    /// description must end inside the segment (the loader reads a property
    /// note's description by its stated size).
    fn notes(&self, addr: u64, size: u64) -> Result<(), String> {
        let up = |n: u64| n.checked_add(7).map(|n| n & !7);
        let mut at = 0u64;
        while at + 12 < size {
            let header = addr.checked_add(at).and_then(|a| Some((self.u32_at(a)?, self.u32_at(a + 4)?)));
            let (name, desc) = header.ok_or("a note lies outside the file")?;
            let end =
                up(12 + u64::from(name)).and_then(|d| d.checked_add(u64::from(desc))).and_then(|e| e.checked_add(at));
            match end {
                Some(end) if end <= size => at = up(end).unwrap_or(u64::MAX),
                _ => return Err(format!("the note at offset {at} runs past the segment ({size} bytes)")),
            }
        }
        Ok(())
    }

    fn u32_at(&self, addr: u64) -> Option<u32> {
        self.bytes(addr, 4).map(|b| ne_u32(b, 0))
    }
}

/// The 16-, 32- and 64-bit words at `at` in `b`, in the host's byte order
/// (the only one that gets past `check`); the caller has the bytes.
fn ne_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn ne_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5], b[at + 6], b[at + 7]])
}

/// Size of an ELF64 symbol, relocation with addend, relocation, and relative relocation.
const SYM_SIZE: u64 = 24;
const RELA_SIZE: u64 = 24;
const REL_SIZE: u64 = 16;
const RELR_SIZE: u64 = 8;

/// The dynamic entries up to the end marker.
struct Dynamic(Vec<(i64, u64)>);

impl Dynamic {
    /// The value of `tag`: its last entry, as the loader keeps it.
    fn get(&self, tag: i64) -> Option<u64> {
        self.0.iter().rev().find(|d| d.0 == tag).map(|d| d.1)
    }

    /// The value of `tag`, which must be there because `by` is.
    fn needed(&self, tag: i64, name: &str, by: &str) -> Result<u64, ElfError> {
        self.get(tag).ok_or_else(|| damaged(format!("the dynamic section has {by} but no {name}")))
    }

    /// A table's address and size in bytes, a whole number of `entry`-byte entries.
    fn table(&self, at: i64, size: i64, what: &str, entry: u64) -> Result<Option<(u64, u64)>, ElfError> {
        let Some(addr) = self.get(at) else { return Ok(None) };
        let bytes = self.needed(size, &format!("size for its {what}"), &format!("a {what}"))?;
        if bytes % entry != 0 {
            return Err(damaged(format!("the {what} is {bytes} bytes, not a whole number of {entry}-byte entries")));
        }
        Ok(Some((addr, bytes)))
    }
}

/// The tables that the loader walks while it loads a library: strings,
/// symbols, relocations, hash tables and symbol versions. A damaged one
/// makes it read or write outside the library's memory (a signal), fail
/// one of its own assertions (the process exits), or loop for ever: each
/// is checked with its bounds, entry by entry, in time linear in its size.
struct Tables<'a> {
    image: &'a Image<'a>,
    /// The string table, which ends with a NUL: every offset inside it
    /// starts a string that ends inside it.
    strings: &'a [u8],
    symtab: u64,
    text_relocations: bool,
    /// The symbol version table and the highest version index the version
    /// lists give, when the loader uses them (it indexes its versions with
    /// the table's entries unchecked).
    versions: Option<(u64, u64)>,
}

impl<'a> Tables<'a> {
    fn new(image: &'a Image<'a>, dynamic: &Dynamic) -> Result<Self, ElfError> {
        let strtab = dynamic.needed(elf::DT_STRTAB, "string table", "a dynamic section")?;
        let strsz = dynamic.needed(elf::DT_STRSZ, "string table size", "a string table")?;
        let symtab = dynamic.needed(elf::DT_SYMTAB, "symbol table", "a dynamic section")?;
        let strings =
            image.bytes(strtab, strsz).ok_or_else(|| damaged("the dynamic string table is not stored in the file"))?;
        if strings.last() != Some(&0) {
            return Err(damaged("the dynamic string table does not end with a NUL"));
        }
        let text_relocations = dynamic.get(elf::DT_TEXTREL).is_some()
            || dynamic.get(elf::DT_FLAGS).is_some_and(|f| f & u64::from(elf::DF_TEXTREL) != 0);
        Ok(Tables { image, strings, symtab, text_relocations, versions: None })
    }

    fn check(mut self, dynamic: &Dynamic) -> Result<(), ElfError> {
        for &(tag, v) in &dynamic.0 {
            if matches!(tag, elf::DT_NEEDED | elf::DT_SONAME | elf::DT_RPATH | elf::DT_RUNPATH) {
                self.string(v).map_err(|e| damaged(format!("dynamic entry {tag:#x}: {e}")))?;
            }
        }
        // Entry sizes the loader asserts (a failed assertion ends the process).
        let entry_size = |tag: i64, name: &str, by: &str, want: u64| -> Result<(), ElfError> {
            match dynamic.needed(tag, name, by)? {
                n if n == want => Ok(()),
                n => Err(damaged(format!("the {name} is {n}, not {want}"))),
            }
        };
        if dynamic.get(elf::DT_RELA).is_some() {
            entry_size(elf::DT_RELAENT, "relocation entry size", "a relocation table", RELA_SIZE)?;
        }
        if dynamic.get(elf::DT_RELR).is_some() {
            entry_size(elf::DT_RELRENT, "relative relocation entry size", "a relative relocation table", RELR_SIZE)?;
        }
        // 64-bit machines relocate with addends only.
        if let Some(kind) = dynamic.get(elf::DT_PLTREL).filter(|&k| k != elf::DT_RELA as u64) {
            return Err(damaged(format!("the procedure linkage relocations are of kind {kind}, not RELA")));
        }

        let symbols = match (dynamic.get(elf::DT_GNU_HASH), dynamic.get(elf::DT_HASH)) {
            (Some(at), _) => self.gnu_hash(at)?,
            (None, Some(at)) => self.sysv_hash(at)?,
            (None, None) => 0,
        };
        let mut highest = 0;
        let mut budget = Budget(self.image.data.len() as u64 / 8);
        if let Some(at) = dynamic.get(elf::DT_VERNEED) {
            highest = highest.max(self.version_needs(at, &mut budget)?);
        }
        if let Some(at) = dynamic.get(elf::DT_VERDEF) {
            highest = highest.max(self.version_definitions(at, &mut budget)?);
        }
        if let Some(at) = dynamic.get(elf::DT_VERSYM) {
            let table = self.image.bytes(at, symbols.saturating_mul(2));
            let table = table.ok_or_else(|| damaged("the symbol version table is cut short"))?;
            if highest > 0 {
                self.versions = Some((at, highest));
                for (i, v) in table.chunks_exact(2).enumerate() {
                    self.version_index(i as u64, ne_u16(v, 0))?;
                }
            }
        }

        let relatives = |tag: i64| dynamic.get(tag).unwrap_or(0);
        if let Some((at, size)) = dynamic.table(elf::DT_RELA, elf::DT_RELASZ, "relocation table", RELA_SIZE)? {
            self.relocations("relocation table", at, size, RELA_SIZE, relatives(elf::DT_RELACOUNT))?;
        }
        if let Some((at, size)) = dynamic.table(elf::DT_REL, elf::DT_RELSZ, "relocation table", REL_SIZE)? {
            self.relocations("relocation table", at, size, REL_SIZE, relatives(elf::DT_RELCOUNT))?;
        }
        let plt = "procedure linkage relocation table";
        if let Some((at, size)) = dynamic.table(elf::DT_JMPREL, elf::DT_PLTRELSZ, plt, RELA_SIZE)? {
            self.relocations(plt, at, size, RELA_SIZE, 0)?;
        }
        let relr = "relative relocation table";
        if let Some((at, size)) = dynamic.table(elf::DT_RELR, elf::DT_RELRSZ, relr, RELR_SIZE)? {
            self.relative_relocations(at, size)?;
        }
        Ok(())
    }

    /// A string of the dynamic string table (which ends with a NUL).
    fn string(&self, offset: u64) -> Result<(), String> {
        if offset < self.strings.len() as u64 {
            return Ok(());
        }
        Err(format!("string offset {offset} is past the end of the string table ({} bytes)", self.strings.len()))
    }

    /// Symbol `index`: stored in the file, its name a string of the table,
    /// its version (if the loader reads one) one that the lists give.
    fn symbol(&self, index: u64) -> Result<(), ElfError> {
        let at = index.checked_mul(SYM_SIZE).and_then(|o| self.symtab.checked_add(o));
        let Some(name) = at.and_then(|at| self.image.bytes(at, SYM_SIZE)).map(|sym| ne_u32(sym, 0)) else {
            return Err(damaged(format!("symbol {index} lies outside the symbol table's memory")));
        };
        self.string(u64::from(name)).map_err(|e| damaged(format!("symbol {index}'s name: {e}")))?;
        if let Some((table, _)) = self.versions {
            let version = index.checked_mul(2).and_then(|o| table.checked_add(o)).and_then(|a| self.image.bytes(a, 2));
            let Some(v) = version else {
                return Err(damaged(format!("symbol {index} has no entry in the symbol version table")));
            };
            self.version_index(index, ne_u16(v, 0))?;
        }
        Ok(())
    }

    /// A symbol's version index: one of the versions the lists give.
    fn version_index(&self, symbol: u64, v: u16) -> Result<(), ElfError> {
        let highest = self.versions.map_or(0, |(_, h)| h);
        let index = u64::from(v & 0x7fff);
        if index > highest.max(1) {
            return Err(damaged(format!("symbol {symbol} has version {index}, past the highest defined ({highest})")));
        }
        Ok(())
    }

    /// A table of REL or RELA entries: each writes inside memory the loader
    /// may write, and names a symbol that exists. The first `relatives` are
    /// applied as relative relocations whatever their type; after them an
    /// entry of type 0 (none: a linker's placeholder) is skipped unread.
    fn relocations(&self, what: &str, at: u64, size: u64, entry: u64, relatives: u64) -> Result<(), ElfError> {
        let bytes =
            self.image.bytes(at, size).ok_or_else(|| damaged(format!("the {what} is not stored in the file")))?;
        for (i, e) in bytes.chunks_exact(entry as usize).enumerate() {
            let (offset, info) = (ne_u64(e, 0), ne_u64(e, 8));
            if i as u64 >= relatives && info & 0xffff_ffff == 0 {
                continue;
            }
            self.write_target(what, i, offset)?;
            let sym = info >> 32;
            if sym != 0 {
                self.symbol(sym).map_err(|e| damaged(format!("entry {i} of the {what}: {}", message(e))))?;
            }
        }
        Ok(())
    }

    /// Entry `i` of a relocation table writes a word at `addr`: memory the
    /// loader may write while relocating.
    fn write_target(&self, what: &str, i: usize, addr: u64) -> Result<(), ElfError> {
        if self.image.writable(addr, 8, self.text_relocations) {
            return Ok(());
        }
        Err(damaged(format!("entry {i} of the {what} writes at {addr:#x}, outside the library's writable memory")))
    }

    /// A RELR table: addresses, each followed by bitmaps of the 63 words after it.
    fn relative_relocations(&self, at: u64, size: u64) -> Result<(), ElfError> {
        let what = "relative relocation table";
        let bytes =
            self.image.bytes(at, size).ok_or_else(|| damaged(format!("the {what} is not stored in the file")))?;
        let mut next = None;
        for (i, e) in bytes.chunks_exact(RELR_SIZE as usize).enumerate() {
            let e = ne_u64(e, 0);
            if e & 1 == 0 {
                self.write_target(what, i, e)?;
                next = e.checked_add(8);
                continue;
            }
            let Some(base) = next else {
                return Err(damaged(format!("entry {i} of the {what} is a bitmap without an address")));
            };
            for bit in 1..64u64 {
                if (e >> bit) & 1 == 1 {
                    self.write_target(what, i, base.saturating_add((bit - 1) * 8))?;
                }
            }
            next = base.checked_add(63 * 8);
        }
        Ok(())
    }

    /// A GNU hash table; returns how many symbols it covers. Each chain is
    /// a run of entries up to one with the low bit set, and chains may
    /// share their tails: walked from the buckets in order, no entry twice.
    fn gnu_hash(&self, at: u64) -> Result<u64, ElfError> {
        let cut = || damaged("the GNU hash table is cut short or points outside the library");
        let word = |k: u64| at.checked_add(k * 4).and_then(|a| self.image.u32_at(a)).map(u64::from).ok_or_else(cut);
        let (buckets, first, bloom) = (word(0)?, word(1)?, word(2)?);
        // A lookup takes a hash modulo the bucket count and masks with the
        // filter's word count less one (zero of either reads out of bounds).
        if buckets == 0 {
            return Err(damaged("the GNU hash table has no buckets"));
        }
        if bloom == 0 {
            return Err(damaged("the GNU hash table has no filter words"));
        }
        let bucket_at = at.checked_add(16).and_then(|a| a.checked_add(bloom.checked_mul(8)?)).ok_or_else(cut)?;
        let chain_at = bucket_at.checked_add(buckets.checked_mul(4).ok_or_else(cut)?).ok_or_else(cut)?;
        let heads = self.image.bytes(bucket_at, chain_at - bucket_at).ok_or_else(cut)?;
        if self.image.bytes(at, bucket_at - at).is_none() {
            return Err(cut());
        }
        let mut starts: Vec<(u64, u64)> = heads
            .chunks_exact(4)
            .enumerate()
            .map(|(b, h)| (u64::from(ne_u32(h, 0)), b as u64))
            .filter(|&(index, _)| index != 0)
            .collect();
        starts.sort_unstable();
        let mut symbols = first;
        for (mut index, b) in starts {
            if index < first {
                return Err(damaged(format!(
                    "GNU hash bucket {b} names symbol {index}, below the first hashed one ({first})"
                )));
            }
            // Already walked: a start inside the last chain ends where it did.
            if index < symbols {
                continue;
            }
            loop {
                self.symbol(index)?;
                let link = (index - first).checked_mul(4).and_then(|o| chain_at.checked_add(o));
                let hash = link.and_then(|a| self.image.u32_at(a)).ok_or_else(cut)?;
                symbols = symbols.max(index + 1);
                if hash & 1 == 1 {
                    break;
                }
                index += 1;
            }
        }
        Ok(symbols)
    }

    /// A System V hash table; returns how many symbols it covers. Its
    /// chains are disjoint lists ended by symbol 0: one that comes back to
    /// an entry would make every lookup through it loop for ever.
    fn sysv_hash(&self, at: u64) -> Result<u64, ElfError> {
        let cut = || damaged("the hash table is cut short or points outside the library");
        let (buckets, chains) = (self.image.u32_at(at).ok_or_else(cut)?, self.image.u32_at(at + 4).ok_or_else(cut)?);
        if buckets == 0 {
            return Err(damaged("the hash table has no buckets"));
        }
        let entries = u64::from(buckets) + u64::from(chains);
        let bytes = self.image.bytes(at + 8, entries * 4).ok_or_else(cut)?;
        let value = |k: usize| ne_u32(bytes, k * 4);
        if let Some(index) = (0..entries as usize).map(value).find(|&i| i >= chains) {
            return Err(damaged(format!("the hash table names symbol {index} of {chains}")));
        }
        let mut seen = vec![false; chains as usize];
        for b in 0..buckets as usize {
            let mut index = value(b);
            while index != 0 {
                if std::mem::replace(&mut seen[index as usize], true) {
                    return Err(damaged(format!("the hash table's chains come back to symbol {index}")));
                }
                index = value(buckets as usize + index as usize);
            }
        }
        for index in 0..u64::from(chains) {
            self.symbol(index)?;
        }
        Ok(u64::from(chains))
    }

    /// Walks a list linked by forward offsets, as the loader does: `visit`
    /// each entry from `at`, then follow the 32-bit link `link` bytes into
    /// it, until a link is zero. Every link moves forward, so a walk ends
    /// where the library's bytes do at the latest; lists that share entries
    /// (which no linker makes) spend the budget and are refused.
    fn walk(
        &self,
        at: u64,
        link: u64,
        budget: &mut Budget,
        cut: &dyn Fn() -> ElfError,
        visit: &mut dyn FnMut(u64, &mut Budget) -> Result<(), ElfError>,
    ) -> Result<(), ElfError> {
        let mut entry = at;
        loop {
            budget.spend()?;
            visit(entry, budget)?;
            let next = entry.checked_add(link).and_then(|a| self.image.u32_at(a)).ok_or_else(cut)?;
            if next == 0 {
                return Ok(());
            }
            entry = entry.checked_add(u64::from(next)).ok_or_else(cut)?;
        }
    }

    /// The version needs (16 bytes each, linked at 12), each with its list
    /// of needed versions (the same shape), from its offset at 8; returns
    /// the highest version index they give.
    fn version_needs(&self, at: u64, budget: &mut Budget) -> Result<u64, ElfError> {
        let cut = || damaged("the version needs table is cut short or points outside the library");
        let word = |a: u64| self.image.u32_at(a).ok_or_else(cut);
        let mut highest = 0;
        self.walk(at, 12, budget, &cut, &mut |need, budget| {
            self.image.bytes(need, 16).ok_or_else(cut)?;
            self.string(u64::from(word(need + 4)?)).map_err(|e| damaged(format!("a version need's file: {e}")))?;
            let versions = need.checked_add(u64::from(word(need + 8)?)).ok_or_else(cut)?;
            self.walk(versions, 12, budget, &cut, &mut |aux, _| {
                let entry = self.image.bytes(aux, 16).ok_or_else(cut)?;
                highest = highest.max(u64::from(ne_u16(entry, 6) & 0x7fff));
                self.string(u64::from(word(aux + 8)?)).map_err(|e| damaged(format!("a needed version's name: {e}")))
            })
        })?;
        Ok(highest)
    }

    /// The version definitions (20 bytes each, linked at 16), each with its
    /// names (8 bytes each, linked at 4), from its offset at 12; returns
    /// the highest version index they give.
    fn version_definitions(&self, at: u64, budget: &mut Budget) -> Result<u64, ElfError> {
        let cut = || damaged("the version definitions table is cut short or points outside the library");
        let word = |a: u64| self.image.u32_at(a).ok_or_else(cut);
        let mut highest = 0;
        self.walk(at, 16, budget, &cut, &mut |def, budget| {
            let entry = self.image.bytes(def, 20).ok_or_else(cut)?;
            highest = highest.max(u64::from(ne_u16(entry, 4) & 0x7fff));
            let names = def.checked_add(u64::from(word(def + 12)?)).ok_or_else(cut)?;
            self.walk(names, 4, budget, &cut, &mut |aux, _| {
                self.string(u64::from(word(aux)?)).map_err(|e| damaged(format!("a version's name: {e}")))
            })
        })?;
        Ok(highest)
    }
}

/// How many more list entries a file's version lists may have: no more
/// than its bytes could hold without sharing entries (8 bytes each at
/// least), so that lists made to overlap cannot make the check quadratic.
struct Budget(u64);

impl Budget {
    fn spend(&mut self) -> Result<(), ElfError> {
        self.0 = self.0.checked_sub(1).ok_or_else(|| damaged("the symbol version lists share entries"))?;
        Ok(())
    }
}

/// The words of an error.
fn message(e: ElfError) -> String {
    match e {
        ElfError::Damaged(m) | ElfError::NoDescriptor(m) => m,
        ElfError::Foreign { plugin, host } => format!("plugin has {plugin}, host has {host}"),
    }
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

    /// The shared libraries this test process runs with (libc, libgcc_s,
    /// the loader): valid ones, which the dynamic loader has just loaded.
    fn loaded_libraries() -> Vec<std::path::PathBuf> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let mut libs: Vec<std::path::PathBuf> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.starts_with('/') && p.contains(".so"))
            .map(std::path::PathBuf::from)
            .collect();
        libs.sort();
        libs.dedup();
        libs
    }

    /// The shared libraries of the Rust toolchain that builds this test
    /// (linked by lld, then rearranged by a post-link optimiser).
    fn toolchain_libraries() -> Vec<std::path::PathBuf> {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let out = std::process::Command::new(&rustc).args(["--print", "sysroot"]).output();
        let sysroot = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
        let entries = std::fs::read_dir(std::path::Path::new(&sysroot).join("lib"));
        let libs: Vec<_> = entries
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.to_string_lossy().contains(".so"))
            .collect();
        assert!(
            !libs.is_empty(),
            "no shared libraries in the toolchain's sysroot {sysroot:?} ({rustc} --print sysroot)"
        );
        libs
    }

    #[test]
    fn valid_libraries_pass_every_check() {
        // No false alarm: every check accepts the libraries that the
        // system's own linker made and its loader loaded into this process,
        // and the toolchain's, which other tools made.
        let libs = loaded_libraries();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")), "no libc among {libs:?}");
        for lib in libs.into_iter().chain(toolchain_libraries()) {
            // A `.so` may be a linker script (text): only ELF files count.
            let Ok(data) = std::fs::read(&lib) else { continue };
            if !data.starts_with(&elf::ELFMAG) {
                continue;
            }
            match check(&data, "MICRO_PLUGIN", "MICRO_PLUGIN_ENTRY") {
                Err(ElfError::NoDescriptor(_)) => {}
                other => panic!("{}: {other:?}", lib.display()),
            }
        }
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
