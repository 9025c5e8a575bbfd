#!/usr/bin/env bash
# Builds the Debian package into target/debian/: the release binary, then the man pages and
# shell completions it generates from its own command line (target/assets/), then
# `cargo deb --no-build` with the assets listed in Cargo.toml's [package.metadata.deb].
# Needs cargo-deb: `cargo install cargo-deb --locked`.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --locked
bin=target/release/gatehouse
rm -rf target/assets
mkdir -p target/assets/man target/assets/completions
"$bin" man target/assets/man
"$bin" completions bash > target/assets/completions/gatehouse.bash
"$bin" completions zsh > target/assets/completions/_gatehouse
"$bin" completions fish > target/assets/completions/gatehouse.fish
cargo deb --no-build --locked --strip "$@"
