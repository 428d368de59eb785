//! The `switchyard` binary: everything lives in the library; see `switchyard::cli`.

// mimalloc: fewer cycles per allocation than glibc malloc on the request path
// (measured in benches/e2e; see the commit that added it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
