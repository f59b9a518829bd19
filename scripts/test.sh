#!/usr/bin/env bash
# The project's test command: formatting, lints, the docker-compose files and
# every test target. Extra arguments are passed to `cargo test`, e.g.
#   scripts/test.sh -- --nocapture
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "dependencies (scripts/install-deps.sh)"
bash scripts/install-deps.sh

step "the local test image for the Docker tests (scripts/test-image.sh)"
bash scripts/test-image.sh

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "docker-compose config -q: the plain stack, with docker-compose.etcd-tls.yml over it, and the agent stack"
if command -v docker-compose >/dev/null 2>&1; then
    docker-compose -f docker-compose.etcd.yml config -q
    docker-compose -f docker-compose.etcd.yml -f docker-compose.etcd-tls.yml config -q
    docker-compose -f docker-compose.agent.yml config -q
else
    echo "docker-compose not installed; skipping the compose file check"
fi

step "cargo test --workspace --all-targets${*:+ $*}"
cargo test --workspace --all-targets "$@"
