//! The capture reader (pcap and pcapng, for `bridgehead replay --pcap` and a scenario's `rtp`
//! steps) on arbitrary files: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("bridgehead-fuzz-{}.pcap", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = bridgehead::replay::capture::read_capture(&path);
    let _ = bridgehead::replay::capture::read_rtp(&path);
});
