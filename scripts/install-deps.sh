#!/usr/bin/env bash
# Installs the system packages citadel needs for building and testing:
#   etcd, etcdctl (etcd-server, etcd-client), protoc (protobuf-compiler) and
#   protobuf's well-known .proto files (libprotobuf-dev), which etcd-client's
#   build imports (google/protobuf/descriptor.proto); protobuf-compiler only
#   recommends that package, and we install without recommends. openssl makes the
#   throwaway certificates of the TLS engine test. chromium (headless) renders the
#   controller's status page in tests/http.rs.
# Idempotent: does nothing (and prints nothing) when everything is present.
#
# Usage: scripts/install-deps.sh [--demo] [--dry-run]
#   --demo      only what scripts/demo.sh needs: etcd, etcdctl and what the build needs
#               (protoc, protobuf's .proto files); not openssl nor chromium, which only the
#               tests use
#   --dry-run   print the packages that would be installed, and install nothing
set -euo pipefail

demo=false
dry_run=false
for arg in "$@"; do
    case "$arg" in
    --demo) demo=true ;;
    --dry-run) dry_run=true ;;
    -h | --help)
        sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "install-deps: unknown argument: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found." >&2
    echo "install-deps: install a Rust toolchain (edition 2024, Rust >= 1.85) and put cargo on PATH;" >&2
    echo "install-deps: it cannot be installed automatically here (rustup is not reachable)." >&2
    exit 1
fi

# command -> Debian package
declare -A packages=(
    [etcd]=etcd-server
    [etcdctl]=etcd-client
    [protoc]=protobuf-compiler
    [openssl]=openssl
    [chromium]=chromium
)

# What the demo needs (building, etcd); the tests need openssl and chromium too.
commands=(etcd etcdctl protoc)
if ! $demo; then
    commands+=(openssl chromium)
fi

missing=()
for cmd in "${commands[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        missing+=("${packages[$cmd]}")
    fi
done
well_known=/usr/include/google/protobuf/descriptor.proto
if [[ ! -f $well_known ]]; then
    missing+=(libprotobuf-dev)
fi

if ((${#missing[@]} == 0)); then
    exit 0
fi

if $dry_run; then
    echo "install-deps: would install ${missing[*]}"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: missing packages: ${missing[*]}, and apt-get is not available;" >&2
    echo "install-deps: install etcd, etcdctl, protoc and chromium by other means." >&2
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: missing packages: ${missing[*]}; run as root or install sudo." >&2
        exit 1
    fi
    sudo=(sudo)
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
${sudo[@]+"${sudo[@]}"} apt-get update -qq
${sudo[@]+"${sudo[@]}"} apt-get install -y -qq --no-install-recommends "${missing[@]}"

for cmd in "${commands[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "install-deps: $cmd still not found after installing ${missing[*]}" >&2
        exit 1
    fi
done
if [[ ! -f $well_known ]]; then
    echo "install-deps: $well_known still missing after installing ${missing[*]}" >&2
    exit 1
fi
