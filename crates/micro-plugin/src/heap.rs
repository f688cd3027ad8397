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

use crate::abi::{FfiPair, FfiVec, HostApi};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
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

/// A vector handed over to the other side of one heap ([`identity`]),
/// which then owns it ([`take`]): its raw parts, nothing copied.
#[inline]
pub(crate) fn give<T>(v: Vec<T>) -> FfiVec {
    let mut v = std::mem::ManuallyDrop::new(v);
    FfiVec { ptr: v.as_mut_ptr() as *mut u8, len: v.len(), cap: v.capacity() }
}

/// A string handed over (see [`give`]).
#[inline]
pub(crate) fn give_string(s: String) -> FfiVec {
    give(s.into_bytes())
}

/// A string or none handed over (see [`give`]): none is a null pointer,
/// which a vector's never is.
#[inline]
pub(crate) fn give_option(s: Option<String>) -> FfiVec {
    s.map_or(FfiVec::NONE, give_string)
}

/// Headers' keys and values handed over, as pairs in an array that stays
/// this side's (none: no allocation, and no walk of an empty map).
pub(crate) fn give_pairs(headers: HashMap<String, String>) -> Vec<FfiPair> {
    if headers.is_empty() {
        return Vec::new();
    }
    headers.into_iter().map(|(k, v)| FfiPair { key: give_string(k), value: give_string(v) }).collect()
}

/// Headers handed over, as an array of pairs handed over too (none: a
/// null array, no allocation).
pub(crate) fn give_headers(headers: HashMap<String, String>) -> FfiVec {
    if headers.is_empty() {
        return FfiVec::NONE;
    }
    give(give_pairs(headers))
}

/// Takes a vector the other side handed over with [`give`] (none: an
/// empty one).
///
/// # Safety
/// `v` must come from [`give`] of a `Vec<T>` on a side of this side's heap
/// (or be [`FfiVec::NONE`]), handed over to this call alone (taken once).
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
#[inline]
pub(crate) unsafe fn take<T>(v: FfiVec) -> Vec<T> {
    if v.ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: a `Vec<T>`'s parts from this heap, handed over to this call
    // alone: this side now owns it.
    unsafe { Vec::from_raw_parts(v.ptr as *mut T, v.len, v.cap) }
}

/// Takes a string handed over with [`give_string`].
///
/// # Safety
/// As for [`take`], of a `String`'s bytes.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
#[inline]
pub(crate) unsafe fn take_string(v: FfiVec) -> String {
    // SAFETY: guaranteed by the caller.
    let v = unsafe { take(v) };
    // SAFETY: the bytes of a `String` (the caller's contract).
    unsafe { String::from_utf8_unchecked(v) }
}

/// Takes a string or none handed over with [`give_option`].
///
/// # Safety
/// As for [`take_string`].
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
#[inline]
pub(crate) unsafe fn take_option(v: FfiVec) -> Option<String> {
    // SAFETY: guaranteed by the caller.
    (!v.ptr.is_null()).then(|| unsafe { take_string(v) })
}

/// Takes the headers in `pairs`, each handed over with [`give_headers`]
/// (the array itself stays the caller's).
///
/// # Safety
/// Each pair's key and value as for [`take_string`].
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub(crate) unsafe fn take_headers(pairs: &[FfiPair]) -> HashMap<String, String> {
    if pairs.is_empty() {
        // Most calls and responses have none: no table to size.
        return HashMap::new();
    }
    let mut headers = HashMap::with_capacity(pairs.len());
    for p in pairs {
        // SAFETY: each pair is read once, here (the array is not the
        // caller's to read again: its parts are taken).
        let FfiPair { key, value } = unsafe { std::ptr::read(p) };
        // SAFETY: handed over (the caller's contract), taken once.
        let k = unsafe { take_string(key) };
        // SAFETY: as above.
        headers.insert(k, unsafe { take_string(value) });
    }
    headers
}

/// Takes headers handed over with [`give_headers`], their array included.
///
/// # Safety
/// `v` must come from [`give_headers`] on a side of this side's heap,
/// handed over to this call alone.
// SAFETY: unsafe to call; the contract is the `# Safety` section above.
pub(crate) unsafe fn take_header_array(v: FfiVec) -> HashMap<String, String> {
    // SAFETY: guaranteed by the caller: a `Vec<FfiPair>` of this heap.
    let pairs: Vec<FfiPair> = unsafe { take(v) };
    // SAFETY: its pairs were handed over with it; the array is freed after
    // (an `FfiPair` has no drop of its own: only the array goes).
    unsafe { take_headers(&pairs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_handed_over_comes_back_as_the_same_allocation() {
        let s = String::from("greeter.service");
        let at = s.as_ptr();
        // SAFETY: given just above in this process, each taken once.
        let back = unsafe { take_string(give_string(s)) };
        assert_eq!((back.as_str(), back.as_ptr()), ("greeter.service", at));
        // SAFETY: as above.
        let none = unsafe { take_option(give_option(None)) };
        // SAFETY: as above.
        let some = unsafe { take_option(give_option(Some(String::new()))) };
        assert_eq!((none, some), (None, Some(String::new())), "none and an empty string stay apart");
        // SAFETY: as above.
        let empty = unsafe { take::<u8>(FfiVec::NONE) };
        assert!(empty.is_empty());
        let headers = [("k".to_string(), "v".to_string()), ("Micro-Id".to_string(), String::new())];
        // SAFETY: as above.
        let back = unsafe { take_header_array(give_headers(headers.clone().into_iter().collect())) };
        assert_eq!(back, headers.into_iter().collect::<HashMap<_, _>>());
        // SAFETY: as above.
        assert!(unsafe { take_header_array(give_headers(HashMap::new())) }.is_empty());
        assert!(give_headers(HashMap::new()).ptr.is_null(), "no headers, no array");
    }

    #[cfg(feature = "host")]
    #[test]
    fn the_host_is_its_own_heap() {
        // Nothing here adopted a host: this side names its heap by the API
        // it hands to plugins, which a plugin that adopts it reports.
        assert_eq!(identity(), &crate::loader::HOST_API as *const HostApi as usize);
    }
}
