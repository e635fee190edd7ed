//! Profiles and replay scenarios from arbitrary text: never a panic, a clear error or a model.
#![no_main]

use bridgehead::config::Profile;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles/fuzz.yaml");
    let _ = Profile::parse(Path::new(dir), text);
    let _ = bridgehead::replay::scenario::parse(Path::new("fuzz.yaml"), text);
});
