#!/usr/bin/env bash
# Builds the local images the Docker stack (docker-compose.etcd.yml) runs on. This machine has no
# container registry, so nothing can be pulled: each image is a `docker import` of a rootfs made
# from this host's own files.
#
#   scripts/images.sh [--force]
#
#   ETCD_IMAGE          default citadel-local/etcd:3.4.23: Debian's /usr/bin/etcd and
#                       /usr/bin/etcdctl, the libraries they link (ldd), /tmp, /etc/nsswitch.conf;
#                       also at /usr/local/bin, where the upstream etcd images keep them
#   CITADEL_BASE_IMAGE  default citadel-local/base:1: glibc and whatever else
#                       `ldd target/release/citadel` lists, CA certificates, /tmp, /etc/passwd
#
# The citadel image itself (CITADEL_IMAGE) is built by docker-compose from the Dockerfile, on top
# of CITADEL_BASE_IMAGE, so build the binary first: cargo build --release.
#
# Idempotent: an image already present is kept (--force builds it again). Either way each image
# is then checked by running its binaries once (citadel's is mounted from target/release).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

etcd_image=${ETCD_IMAGE:-citadel-local/etcd:3.4.23}
base_image=${CITADEL_BASE_IMAGE:-citadel-local/base:1}
citadel_bin=$PWD/target/release/citadel

force=false
case "${1:-}" in
"") ;;
--force) force=true ;;
*)
    sed -n '2,18p' "$0" >&2
    exit 2
    ;;
esac

say() { printf 'images: %s\n' "$*"; }
die() {
    printf 'images: %s\n' "$*" >&2
    exit 1
}

command -v docker >/dev/null 2>&1 || die "docker not found"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (docker info failed)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The shared objects a dynamically linked program loads, as absolute paths (the loader included);
# nothing for a static one.
libraries() {
    local bin=$1 out
    if ! out=$(ldd "$bin" 2>&1); then
        [[ $out == *"not a dynamic executable"* ]] && return 0
        die "ldd $bin failed: $out"
    fi
    if grep -q 'not found' <<<"$out"; then
        die "$bin links libraries missing on this host: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
    fi
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)";
    # linux-vdso.so.1 has no file.
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out" | sort -u
}

# Copies a file into the rootfs at the same path, following symlinks (the loader looks libraries
# up by the name ldd printed).
install_file() {
    local root=$1 path=$2 mode=${3:-}
    mkdir -p "$root$(dirname "$path")"
    cp -L "$path" "$root$path"
    [[ -z $mode ]] || chmod "$mode" "$root$path"
}

# The directories and files every image gets.
skeleton() {
    local root=$1
    mkdir -p "$root"/{etc,proc,sys,dev,tmp}
    chmod 1777 "$root/tmp"
    # Go's and glibc's resolvers: /etc/hosts first (Docker writes it), then DNS (Docker's own
    # server on a compose network, through the /etc/resolv.conf Docker mounts).
    echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
    printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

# Imports a rootfs as an image, with files owned by root and no host timestamps.
import() {
    local root=$1 image=$2
    shift 2
    tar -C "$root" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -c . |
        docker import "$@" - "$image" >/dev/null
}

present() { docker image inspect "$1" >/dev/null 2>&1; }

size() { docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1 / 1e6}'; }

build_etcd() {
    local etcd=/usr/bin/etcd etcdctl=/usr/bin/etcdctl root=$tmp/etcd lib libs version
    [[ -x $etcd && -x $etcdctl ]] ||
        die "$etcd or $etcdctl missing: install Debian's etcd-server and etcd-client (scripts/install-deps.sh)"
    version=$("$etcd" --version | awk '/^etcd Version:/ {print $3}')
    if [[ $etcd_image != *":$version" ]]; then
        say "warning: the host's etcd is $version, but the image is tagged $etcd_image"
    fi
    skeleton "$root"
    install_file "$root" "$etcd" 0755
    install_file "$root" "$etcdctl" 0755
    # The upstream images (gcr.io/etcd-development/etcd) keep them in /usr/local/bin; the compose
    # file calls them there, so ETCD_IMAGE may name either kind.
    mkdir -p "$root/usr/local/bin"
    ln -s ../../bin/etcd "$root/usr/local/bin/etcd"
    ln -s ../../bin/etcdctl "$root/usr/local/bin/etcdctl"
    mkdir -p "$root/var/lib/etcd"
    # (assigned first: a failure inside a `for … in $(…)` would not stop the script)
    libs=$({ libraries "$etcd" && libraries "$etcdctl"; } | sort -u)
    for lib in $libs; do
        install_file "$root" "$lib"
    done
    import "$root" "$etcd_image" \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change 'ENV ETCDCTL_API=3' \
        --change 'WORKDIR /var/lib/etcd' \
        --change 'EXPOSE 2379 2380' \
        --change 'CMD ["/usr/local/bin/etcd"]' \
        --change "LABEL org.opencontainers.image.title=etcd org.opencontainers.image.version=$version org.opencontainers.image.description=\"Debian etcd $version, imported by scripts/images.sh\""
}

build_base() {
    local root=$tmp/base lib libs ca=/etc/ssl/certs/ca-certificates.crt
    [[ -x $citadel_bin ]] ||
        die "$citadel_bin missing: build it first (cargo build --release); its libraries make the base image"
    skeleton "$root"
    libs=$(libraries "$citadel_bin")
    for lib in $libs; do
        install_file "$root" "$lib"
    done
    if [[ -f $ca ]]; then
        install_file "$root" "$ca" 0644
    else
        say "note: $ca missing (Debian's ca-certificates); the base image has no CA bundle"
    fi
    mkdir -p "$root/usr/local/bin"
    import "$root" "$base_image" \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'LABEL org.opencontainers.image.title=citadel-base org.opencontainers.image.description="The runtime libraries of target/release/citadel, imported by scripts/images.sh"'
}

# build IMAGE FUNCTION: builds unless present (or --force).
build() {
    local image=$1 fn=$2
    if present "$image" && ! $force; then
        say "$image: already present, kept (--force builds it again)"
        return
    fi
    "$fn"
    say "$image: built ($(size "$image"))"
}

build "$etcd_image" build_etcd
build "$base_image" build_base

# Each image must run its binaries: a missing library shows up here, not in the stack.
run() { docker run --rm --network none "$@"; }
got=$(run "$etcd_image" /usr/local/bin/etcd --version 2>&1) ||
    die "$etcd_image: etcd --version failed: $got"
say "$etcd_image: runs $(head -n 1 <<<"$got")"
got=$(run "$etcd_image" /usr/local/bin/etcdctl version 2>&1) ||
    die "$etcd_image: etcdctl version failed: $got"
say "$etcd_image: runs $(head -n 1 <<<"$got")"
if [[ -x $citadel_bin ]]; then
    got=$(run -v "$citadel_bin:/usr/local/bin/citadel:ro" "$base_image" /usr/local/bin/citadel --version 2>&1) ||
        die "$base_image: target/release/citadel does not run on it: $got (rebuild it: scripts/images.sh --force)"
    say "$base_image: runs target/release/citadel ($got)"
fi
say "next: docker-compose -f docker-compose.etcd.yml up -d --build"
