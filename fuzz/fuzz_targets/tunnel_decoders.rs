//! Every tunnel decoder (the agent's hello, stream requests, fingerprints, allow-list entries)
//! over arbitrary bytes: no panic, consumed lengths within the input, round trips.
//!
//! Run: `cargo +nightly fuzz run tunnel_decoders` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::tunnel::proto::check_all_decoders(data);
});
