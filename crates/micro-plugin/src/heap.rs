//! One heap for host and plugin, so that a call's strings and buffers can
//! change sides instead of being copied.
//!
//! A plugin is a `cdylib` with its own copy of std, whose global allocator
//! need not be the host's (a host may use jemalloc or mimalloc, a plugin
//! the system's). [`export_plugin!`](crate::export_plugin) makes the
//! plugin's global allocator [`HostAllocator`], which allocates with the
//! host's global allocator through the functions of the [`HostApi`] once
//! the plugin is initialised. Both sides then free each other's
//! allocations correctly, and a client call's request and response change
//! sides by their allocations (`String`s and `Vec<u8>`s moved as raw parts)
//! instead of being encoded and copied: on a hot call, four allocations
//! fewer (its service, endpoint and content type on the plugin's side, the
//! body's copy out of an encoded reply on the host's; BENCHMARKS.md).
//!
//! The switch is safe only if the plugin allocated nothing before it:
//! a pointer from the plugin's own allocator must never reach the host's.
//! So the first allocation before initialisation pins the plugin to the
//! system allocator for good (a library constructor that allocates, say),
//! and such a plugin's calls are copied as before. Whether two sides share
//! a heap is asked, never assumed: each side's [`identity`] is the address of
//! the host API its allocations go through (a static of its own when they go
//! to its own allocator), and moves happen only between sides whose
//! identities are equal. Only objects made by the crate's own `export_client`
//! answer the question (see `object::HEAP`), so no safe code can claim a heap
//! it does not share.
#![allow(unsafe_code)]

use crate::abi::HostApi;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicPtr, Ordering};

#[cfg(feature = "host")]
/// The host's allocation entry points, exported through the [`HostApi`]:
/// the host's global allocator.
///
/// # Safety
/// As for [`GlobalAlloc::alloc`]: `align` a power of two, `size` non-zero
/// and, rounded up to `align`, at most `isize::MAX`.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub(crate) unsafe extern "C" fn heap_alloc(size: usize, align: usize) -> *mut u8 {
    // SAFETY: a valid layout by this function's contract.
    let layout = unsafe { Layout::from_size_align_unchecked(size, align) };
    // SAFETY: non-zero size by this function's contract.
    unsafe { std::alloc::alloc(layout) }
}

#[cfg(feature = "host")]
/// As [`heap_alloc`], zeroed.
///
/// # Safety
/// As for [`heap_alloc`].
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub(crate) unsafe extern "C" fn heap_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    // SAFETY: a valid layout by this function's contract.
    let layout = unsafe { Layout::from_size_align_unchecked(size, align) };
    // SAFETY: non-zero size by this function's contract.
    unsafe { std::alloc::alloc_zeroed(layout) }
}

#[cfg(feature = "host")]
/// Frees what [`heap_alloc`] (or [`heap_realloc`]) returned.
///
/// # Safety
/// As for [`GlobalAlloc::dealloc`]: `ptr` from this heap with this layout.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub(crate) unsafe extern "C" fn heap_dealloc(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: the layout it was allocated with, by this function's contract.
    let layout = unsafe { Layout::from_size_align_unchecked(size, align) };
    // SAFETY: allocated by this heap with `layout`, by this function's contract.
    unsafe { std::alloc::dealloc(ptr, layout) }
}

#[cfg(feature = "host")]
/// Resizes what [`heap_alloc`] returned.
///
/// # Safety
/// As for [`GlobalAlloc::realloc`].
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub(crate) unsafe extern "C" fn heap_realloc(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8 {
    // SAFETY: the layout it was allocated with, by this function's contract.
    let layout = unsafe { Layout::from_size_align_unchecked(size, align) };
    // SAFETY: allocated by this heap with `layout`; `new_size` valid by contract.
    unsafe { std::alloc::realloc(ptr, layout, new_size) }
}

/// The host's API once this side allocates through it; [`OWN`] once it
/// allocated before that and so keeps its own allocator; null before either.
static HOST: AtomicPtr<HostApi> = AtomicPtr::new(std::ptr::null_mut());

/// [`HOST`]'s value for "this side's own allocator, for good": a dangling
/// address (the type's alignment), never that of a live `HostApi`.
const OWN: *mut HostApi = std::ptr::dangling_mut::<HostApi>();

/// The host's API if this side allocates through it; else (the first call
/// before [`adopt`] decides it) `None` for good.
#[inline]
fn host() -> Option<&'static HostApi> {
    let mut at = HOST.load(Ordering::Acquire);
    if at.is_null() {
        // Nothing allocated yet: this allocation pins the own allocator.
        at = match HOST.compare_exchange(std::ptr::null_mut(), OWN, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => OWN,
            Err(now) => now,
        };
    }
    if at == OWN {
        return None;
    }
    // SAFETY: not null and not OWN: the `&'static HostApi` that `adopt` stored.
    Some(unsafe { &*at })
}

/// Makes this side allocate through `host` from now on, unless it has
/// allocated already. Returns whether it does.
///
/// Called by a plugin's `init` before anything else, and only when
/// [`HostAllocator`] is the plugin's global allocator (the export macro
/// says so): otherwise [`identity`] would claim a heap this side does not use.
pub(crate) fn adopt(host: &'static HostApi) -> bool {
    let api = host as *const HostApi as *mut HostApi;
    match HOST.compare_exchange(std::ptr::null_mut(), api, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => true,
        Err(now) => now == api,
    }
}

/// Which heap this side's allocations come from, as an address: that of
/// the host's [`HostApi`] for a plugin that allocates through it, and for
/// the host itself (the API it hands to plugins); for a side that keeps its
/// own allocator, that of a static of its own copy of this crate. Addresses
/// of statics are unique in a process, so two sides report the same only
/// if their allocations end in the same global allocator: then one side's
/// allocation may be freed by the other. (Not "if and only if": a plugin
/// pinned to the system allocator in a host that uses it too reports
/// another heap, and its calls are copied.)
pub(crate) fn identity() -> usize {
    let at = HOST.load(Ordering::Acquire);
    if !at.is_null() && at != OWN {
        return at as usize;
    }
    own_heap()
}

/// The host's heap, named by the API it hands to plugins.
#[cfg(feature = "host")]
fn own_heap() -> usize {
    &crate::loader::HOST_API as *const HostApi as usize
}

/// A heap that no plugin can have adopted: this copy of the crate cannot
/// load plugins (no `host` feature), so it has no API to hand them.
#[cfg(not(feature = "host"))]
fn own_heap() -> usize {
    static OWN_HEAP: u8 = 0;
    &OWN_HEAP as *const u8 as usize
}

/// A plugin's global allocator (set by [`export_plugin!`](crate::export_plugin)):
/// the host's global allocator once the plugin is initialised, the system
/// allocator if the plugin allocated before that.
pub struct HostAllocator;

// Every allocation is served by one allocator for the whole process life
// (`host` never changes its answer once given), and freed by the same one:
// the host's global allocator through its entry points, or `System`.
// SAFETY: so allocations and frees always meet the same allocator (above).
unsafe impl GlobalAlloc for HostAllocator {
    #[inline]
    // SAFETY: the caller keeps `GlobalAlloc::alloc`'s contract, which this passes on.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match host() {
            // SAFETY: the host's allocator, with the caller's valid layout.
            Some(h) => unsafe { (h.alloc)(layout.size(), layout.align()) },
            // SAFETY: as above, with the system allocator.
            None => unsafe { System.alloc(layout) },
        }
    }
    #[inline]
    // SAFETY: the caller keeps `GlobalAlloc::alloc_zeroed`'s contract, which this passes on.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match host() {
            // SAFETY: as in `alloc`.
            Some(h) => unsafe { (h.alloc_zeroed)(layout.size(), layout.align()) },
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }
    #[inline]
    // SAFETY: the caller keeps `GlobalAlloc::dealloc`'s contract, which this passes on.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match host() {
            // SAFETY: `ptr` was allocated by the same allocator (see the impl's note).
            Some(h) => unsafe { (h.dealloc)(ptr, layout.size(), layout.align()) },
            // SAFETY: as above.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }
    #[inline]
    // SAFETY: the caller keeps `GlobalAlloc::realloc`'s contract, which this passes on.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match host() {
            // SAFETY: as in `dealloc`, with the caller's valid new size.
            Some(h) => unsafe { (h.realloc)(ptr, layout.size(), layout.align(), new_size) },
            // SAFETY: as above.
            None => unsafe { System.realloc(ptr, layout, new_size) },
        }
    }
}

/// A vector's raw parts (pointer, length, capacity) as the words that
/// move it to the other side, which then owns it ([`vec_from`]). Only
/// between sides of one heap ([`identity`]). A crossing writes all of a
/// call's parts as one block of words (`Writer::words`), read back in one
/// (`Reader::words`): one bounds check for the lot, not three per part.
#[inline]
pub(crate) fn parts(v: Vec<u8>) -> [u64; 3] {
    let mut v = std::mem::ManuallyDrop::new(v);
    [v.as_mut_ptr() as u64, v.len() as u64, v.capacity() as u64]
}

/// A string's raw parts (see [`parts`]).
#[inline]
pub(crate) fn string_parts(s: String) -> [u64; 3] {
    parts(s.into_bytes())
}

/// A header's key and value, moved (see [`parts`]).
#[inline]
pub(crate) fn pair_parts(k: String, v: String) -> [u64; 6] {
    let ([a, b, c], [d, e, f]) = (string_parts(k), string_parts(v));
    [a, b, c, d, e, f]
}

/// Takes a vector that the other side moved with [`parts`].
///
/// # Safety
/// `p` must be a vector's raw parts made by [`parts`] on a side of this
/// side's heap, handed over to this call alone (taken once).
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
#[inline]
pub(crate) unsafe fn vec_from([ptr, len, cap]: [u64; 3]) -> Vec<u8> {
    // SAFETY: a vector's parts from this heap, handed over to this call
    // alone: this side now owns it.
    unsafe { Vec::from_raw_parts(ptr as usize as *mut u8, len as usize, cap as usize) }
}

/// Takes a string that the other side moved with [`string_parts`].
///
/// # Safety
/// As for [`vec_from`], of a `String`'s bytes.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
#[inline]
pub(crate) unsafe fn string_from(p: [u64; 3]) -> String {
    // SAFETY: guaranteed by the caller.
    let v = unsafe { vec_from(p) };
    // SAFETY: the bytes of a `String` (the caller's contract).
    unsafe { String::from_utf8_unchecked(v) }
}

/// Takes a header that the other side moved with [`pair_parts`].
///
/// # Safety
/// As for [`string_from`], of both strings.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
#[inline]
pub(crate) unsafe fn pair_from([a, b, c, d, e, f]: [u64; 6]) -> (String, String) {
    // SAFETY: guaranteed by the caller, each string taken once.
    let k = unsafe { string_from([a, b, c]) };
    // SAFETY: as above.
    (k, unsafe { string_from([d, e, f]) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_parts_come_back_as_the_same_allocation() -> Result<(), micro_core::Error> {
        let s = String::from("greeter.service");
        let at = s.as_ptr();
        let mut w = crate::wire::Writer::new();
        w.words(string_parts(s)).words(parts(Vec::new())).words(pair_parts("k".into(), "v".into()));
        let bytes = w.finish();
        assert_eq!(bytes.len(), 12 * 8);
        let mut r = crate::wire::Reader::new(&bytes);
        // SAFETY: written just above in this process, each taken once.
        let back = unsafe { string_from(r.words()?) };
        // SAFETY: as above.
        let empty = unsafe { vec_from(r.words()?) };
        // SAFETY: as above.
        let pair = unsafe { pair_from(r.words()?) };
        assert_eq!((back.as_str(), back.as_ptr()), ("greeter.service", at));
        assert_eq!(pair, ("k".to_string(), "v".to_string()));
        assert!(empty.is_empty() && r.remaining() == 0);
        // A block cut short is an error, and takes nothing.
        assert!(crate::wire::Reader::new(&bytes[..20]).words::<3>().is_err());
        Ok(())
    }

    #[cfg(feature = "host")]
    #[test]
    fn the_host_is_its_own_heap() {
        // Nothing here adopted a host: this side names its heap by the API
        // it hands to plugins, which a plugin that adopts it reports.
        assert_eq!(identity(), &crate::loader::HOST_API as *const HostApi as usize);
    }
}
