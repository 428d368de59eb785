//! The route-table validator and router build on arbitrary TOML: errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    if let Ok(loaded) = switchyard::config::parse(src) {
        let _ = switchyard::router::Router::new(&loaded.config);
    }
});
