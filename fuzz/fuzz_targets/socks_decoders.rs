//! Every SOCKS decoder (greeting, RFC 1929 credentials, request, reply, UDP header, SOCKS4/4a)
//! over arbitrary bytes: no panic, consumed lengths within the input, encode/decode round trips.
//!
//! Run: `cargo +nightly fuzz run socks_decoders` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::socks::codec::check_all_decoders(data);
});
