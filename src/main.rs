//! The `switchyard` binary: everything lives in the library; see `switchyard::cli`.

use std::alloc::{GlobalAlloc, Layout};

// mimalloc: fewer cycles per allocation than glibc malloc on the request path
// (measured in benches/e2e; see the commit that added it).
#[global_allocator]
static GLOBAL: Paced = Paced;

/// mimalloc, called through its C interface (`libmimalloc-sys`), with a call to
/// `switchyard::background::pace` before each operation: the gateway's background
/// threads (table builds, freeing a replaced table) give the core away every 200 µs of
/// running, even inside a dependency's code such as the TOML parser. On every other
/// thread `pace` is one thread-local read.
///
/// A layout whose alignment every mimalloc block already has takes the plain calls
/// (`mi_malloc`, `mi_zalloc`, `mi_realloc`); only a larger alignment takes the
/// `_aligned` ones. The `mimalloc` crate's allocator takes the `_aligned` calls for
/// every layout, and mimalloc 3 serves an aligned call above 1 KiB whose size class is
/// not a power of two by over-allocating (size + alignment - 1, in a larger size
/// class), and a smaller one so too when the next free block is not aligned. On the
/// proxy's path that was the answer's header map (16 entries, over 1 KiB): about 200
/// instructions per request (callgrind, `benches/e2e/instructions.sh`).
struct Paced;

/// The alignment every block has, on a 64-bit target: block sizes are whole 8-byte
/// words, and a request of 16 bytes or more gets a block whose size is a multiple of 16
/// (mimalloc rounds it to an even number of words) at a 16-byte boundary (page starts
/// are aligned to `MI_MAX_ALIGN_SIZE`; mimalloc's alloc.c asserts this).
fn plain(align: usize, size: usize) -> bool {
    align <= 8 || align <= 16 && size >= 16
}

// On 32-bit targets mimalloc hands out 4-byte blocks, which `plain` does not allow for.
const _: () = assert!(
    usize::BITS == 64,
    "`plain` assumes mimalloc's 64-bit size classes"
);

/// mimalloc's own calls, for a layout `GlobalAlloc` allows.
mod mi {
    use std::alloc::Layout;
    use std::ffi::c_void;

    use libmimalloc_sys as sys;

    /// # Safety
    /// As `GlobalAlloc::alloc`.
    #[inline]
    pub unsafe fn alloc(layout: Layout) -> *mut u8 {
        // SAFETY: as for `with`.
        unsafe { with(layout, sys::mi_malloc, sys::mi_malloc_aligned) }
    }

    /// # Safety
    /// As `GlobalAlloc::alloc_zeroed`.
    #[inline]
    pub unsafe fn alloc_zeroed(layout: Layout) -> *mut u8 {
        // SAFETY: as for `with`.
        unsafe { with(layout, sys::mi_zalloc, sys::mi_zalloc_aligned) }
    }

    /// A block for `layout` from `plain`, or from `aligned` when `plain`'s blocks may
    /// not be aligned enough (the two are constants at every call: inlined, no
    /// indirect call).
    ///
    /// # Safety
    /// As `GlobalAlloc::alloc`; `plain` and `aligned` are mimalloc's allocation calls,
    /// which have no preconditions (a `Layout`'s alignment is a power of two).
    #[inline]
    unsafe fn with(
        layout: Layout,
        plain: unsafe extern "C" fn(usize) -> *mut c_void,
        aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    ) -> *mut u8 {
        // SAFETY: see above.
        let p: *mut u8 = unsafe {
            if super::plain(layout.align(), layout.size()) {
                plain(layout.size()).cast()
            } else {
                aligned(layout.size(), layout.align()).cast()
            }
        };
        checked(p, layout.align())
    }

    /// # Safety
    /// As `GlobalAlloc::dealloc`: `ptr` came from this allocator.
    #[inline]
    pub unsafe fn dealloc(ptr: *mut u8) {
        // SAFETY: `ptr` is a live block of mimalloc's.
        unsafe { sys::mi_free(ptr.cast::<c_void>()) }
    }

    /// # Safety
    /// As `GlobalAlloc::realloc`: `ptr` came from this allocator with `layout`.
    #[inline]
    pub unsafe fn realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a live block of mimalloc's. Kept in place, it keeps its
        // alignment; moved, it gets a block of `new_size`, which `plain` vouches for.
        let p: *mut u8 = unsafe {
            if super::plain(layout.align(), new_size) {
                sys::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                sys::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        };
        checked(p, layout.align())
    }

    /// `p`, checked in debug builds (which the integration tests run) against the
    /// alignment asked for.
    #[inline]
    fn checked(p: *mut u8, align: usize) -> *mut u8 {
        debug_assert!(
            p.is_null() || p.addr().is_multiple_of(align),
            "mimalloc block misaligned"
        );
        p
    }
}

// SAFETY: every method hands its arguments to mimalloc (see `mi`), whose guarantees
// carry over; `pace` neither allocates nor touches memory handed out by the allocator.
unsafe impl GlobalAlloc for Paced {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if switchyard::background::is_paced() {
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
            return paced(|| unsafe { mi::alloc(layout) });
        }
        // SAFETY: as above.
        unsafe { mi::alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if switchyard::background::is_paced() {
            // SAFETY: as for `alloc`.
            return paced(|| unsafe { mi::alloc_zeroed(layout) });
        }
        // SAFETY: as for `alloc`.
        unsafe { mi::alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        if switchyard::background::is_paced() {
            // SAFETY: `ptr` came from this allocator, i.e. from mimalloc.
            return paced(|| unsafe { mi::dealloc(ptr) });
        }
        // SAFETY: as above.
        unsafe { mi::dealloc(ptr) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if switchyard::background::is_paced() {
            // SAFETY: as for `dealloc`; the caller upholds `realloc`'s size rules.
            return paced(|| unsafe { mi::realloc(ptr, layout, new_size) });
        }
        // SAFETY: as above.
        unsafe { mi::realloc(ptr, layout, new_size) }
    }
}

/// The path of a paced thread, out of line: the common path is then a flag test and a
/// jump to mimalloc, with no registers to save. User-space instructions per proxied GET
/// (callgrind, `benches/e2e/instructions.sh`): 23,226 with plain mimalloc, 23,385 with
/// `pace` inlined in every call, 23,356 this way.
#[cold]
#[inline(never)]
fn paced<T>(op: impl FnOnce() -> T) -> T {
    switchyard::background::pace();
    op()
}

/// Drop this process's mappings of its binary's code and read-only data, once start-up
/// is done. Start-up (argument and config parsing, TLS and logging set-up, the table's
/// validation) runs code spread over most of the 10 MB of machine code, and the kernel
/// maps the file in 64 KiB blocks around each page touched: after start-up about 6.4 MB
/// of it was resident, more than half of the process's memory, and almost none of it
/// runs again. Dropped, only what requests run comes back: peak RSS under the e2e
/// benchmark's c=64 load went from 12.2–12.5 MiB to 10.1–10.4 MiB (below).
///
/// `MADV_DONTNEED` removes this process's mappings of the pages, whoever owns the file;
/// the pages stay in the page cache, which the kernel reclaims as it needs, and come back
/// as minor faults. Not `MADV_PAGEOUT`, which also evicts them: the kernel does that only
/// for a process that owns the file or may write it (or runs as root), and only for pages
/// no other process maps. A gateway running as a non-root user on a root-owned binary,
/// as `deploy/Dockerfile` installs it, got nothing from it. Measured, right after
/// "listening", as the user `nobody` on a root-owned copy: 5.4–6.2 of the code mapping's
/// 9.8 MB resident with `MADV_PAGEOUT`, 2.2–2.5 MB with `MADV_DONTNEED`. As root, where
/// both work, peak RSS under the c=64 load was 9.0–9.3 MiB with `MADV_PAGEOUT` and
/// 10.1–10.4 MiB with `MADV_DONTNEED` in alternating runs (three each; 9.7–11.1 MiB over
/// 19 runs of that binary in all).
///
/// `MADV_DONTNEED` would also throw away private copies of pages (a relocated read-only
/// section, a debugger's breakpoint): mappings holding any, in memory or in swap
/// (`Anonymous:` or `Swap:` above 0 in `/proc/self/smaps`), are left alone. Only a
/// debugger or a uprobe writes to a read-only mapping; a breakpoint set between the read
/// of smaps and the advice would be lost.
#[cfg(target_os = "linux")]
fn drop_start_up_code() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, end) in switchyard::run::clean_read_only_mappings(&smaps, exe.to_str()) {
        // SAFETY: the range is a read-only private mapping of the binary that held no
        // private page (in memory or in swap) when smaps was read, and only a debugger
        // writes to one: every page of it is the file's own content, which the next
        // touch maps again from the page cache or the file. No memory this process can
        // see changes.
        let _ = unsafe {
            rustix::mm::madvise(
                std::ptr::with_exposed_provenance_mut(start),
                end.saturating_sub(start),
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
    }
}

fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    switchyard::run::set_after_startup(drop_start_up_code);
    switchyard::cli::main()
}
