#!/usr/bin/env bash
# The whole check, from a fresh clone: libtorch set-up, formatting, lints, every test (libtorch
# ones included), doc tests, docs, and the feature-isolation guarantee.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --all-features --exclude loss-tch -- -D warnings
cargo clippy -p loss-tch --all-targets -- -D warnings

step "libtorch stays out of the crates that do not need it"
for crate in loss-core loss-multilabel loss-dbnet; do
  if cargo tree -p "$crate" -e normal,build,dev --prefix none | grep -qE '^(tch|torch-sys) '; then
    echo "error: $crate depends on tch" >&2
    exit 1
  fi
done
echo "loss-core, loss-multilabel, loss-dbnet: no tch"

step "tests (unit, integration, doc)"
cargo test --workspace --all-features --exclude loss-tch
cargo test -p loss-tch

step "cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet
