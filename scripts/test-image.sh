#!/usr/bin/env bash
# Builds the local image citadel's Docker tests launch: a busybox rootfs imported with
# `docker import` (this machine has no registry to pull from).
#
#   scripts/test-image.sh [IMAGE]       default image: citadel-test/busybox:1
#   DOCKER_HOST=unix:///run/x.sock scripts/test-image.sh   builds into another daemon
#
# Installs Debian's busybox-static when it is missing. Idempotent: an image already present is
# kept. Prints the image name on stdout.
set -euo pipefail

image=${1:-citadel-test/busybox:1}

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi

# Debian's busybox-static puts a statically linked busybox at /bin/busybox (the dynamic
# `busybox` package would not run inside an empty image).
busybox=/bin/busybox
if ! dpkg -s busybox-static >/dev/null 2>&1; then
    sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    echo "test-image: installing busybox-static" >&2
    export DEBIAN_FRONTEND=noninteractive
    ${sudo[@]+"${sudo[@]}"} apt-get update -qq
    ${sudo[@]+"${sudo[@]}"} apt-get install -y -qq --no-install-recommends busybox-static >&2
fi
[[ -x $busybox ]] || { echo "test-image: $busybox missing after installing busybox-static" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev}
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

tar -C "$root" -c . | docker import \
    --change 'CMD ["/bin/sh"]' \
    --change 'ENV PATH=/bin' \
    - "$image" >/dev/null
echo "$image"
