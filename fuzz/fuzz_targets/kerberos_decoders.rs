//! Every decoder of client bytes in Kerberos logins (RFC 1961 frames of each type, UDP
//! datagrams, wrap-token headers, `Negotiate` header values) over arbitrary bytes: no panic,
//! consumed lengths within the input, round trips.
//!
//! Run: `cargo +nightly fuzz run kerberos_decoders` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::kerberos::check_all_decoders(data);
});
