//! The `switchyard` binary: everything lives in the library; see `switchyard::cli`.

use std::alloc::{GlobalAlloc, Layout};

// mimalloc: fewer cycles per allocation than glibc malloc on the request path
// (measured in benches/e2e; see the commit that added it).
#[global_allocator]
static GLOBAL: Paced = Paced(mimalloc::MiMalloc);

/// mimalloc, with a call to `switchyard::background::pace` before each operation: the
/// gateway's background threads (table builds, freeing a replaced table) give the core
/// away every 200 µs of running, even inside a dependency's code such as the TOML parser.
/// On every other thread `pace` is one thread-local read.
struct Paced(mimalloc::MiMalloc);

// SAFETY: every method forwards its arguments unchanged to mimalloc's implementation of
// the same method, so mimalloc's guarantees carry over; `pace` neither allocates nor
// touches memory handed out by the allocator.
unsafe impl GlobalAlloc for Paced {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if switchyard::background::is_paced() {
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
            return paced(|| unsafe { self.0.alloc(layout) });
        }
        // SAFETY: as above.
        unsafe { self.0.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if switchyard::background::is_paced() {
            // SAFETY: as for `alloc`.
            return paced(|| unsafe { self.0.alloc_zeroed(layout) });
        }
        // SAFETY: as for `alloc`.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if switchyard::background::is_paced() {
            // SAFETY: `ptr` came from this allocator, i.e. from mimalloc, with `layout`.
            return paced(|| unsafe { self.0.dealloc(ptr, layout) });
        }
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if switchyard::background::is_paced() {
            // SAFETY: as for `dealloc`; the caller upholds `realloc`'s size rules.
            return paced(|| unsafe { self.0.realloc(ptr, layout, new_size) });
        }
        // SAFETY: as above.
        unsafe { self.0.realloc(ptr, layout, new_size) }
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

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
