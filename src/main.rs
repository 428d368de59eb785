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
        switchyard::background::pace();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { self.0.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        switchyard::background::pace();
        // SAFETY: as for `alloc`.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        switchyard::background::pace();
        // SAFETY: `ptr` came from this allocator, i.e. from mimalloc, with `layout`.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        switchyard::background::pace();
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s size rules.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
