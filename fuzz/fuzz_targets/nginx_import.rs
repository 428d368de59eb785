//! The nginx parser and translator on arbitrary input: never a panic, and whatever
//! parses translates into a table the gateway's own validator accepts.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    // `include` is resolved relative to this (empty) directory, so inputs cannot pull
    // in files from elsewhere on the machine by relative paths.
    let dir = Path::new("/nonexistent-switchyard-fuzz/nginx.conf");
    let Ok(tree) = switchyard::import::parse::parse_str(src, dir) else { return };
    let imported = switchyard::import::translate(&tree, "fuzz.conf");
    if let Err(errors) = switchyard::config::parse(&imported.toml) {
        panic!("import produced an invalid table: {errors}\n--- input\n{src}\n--- table\n{}", imported.toml);
    }
});
