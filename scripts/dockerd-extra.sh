#!/usr/bin/env bash
# Extra Docker daemons beside the system one, for running the demo by hand with several engines.
# The tests use src/dockerd_process.rs instead; the dockerd flags are the same.
#
#   scripts/dockerd-extra.sh start NAME          starts one (idempotent) and prints its address
#   scripts/dockerd-extra.sh addr NAME           prints its address if it is running
#   scripts/dockerd-extra.sh load NAME [IMAGE]   copies IMAGE (default citadel-test/busybox:1)
#                                                from the system daemon into it
#   scripts/dockerd-extra.sh stop NAME           removes its containers, stops it, removes its dir
#
# Each daemon lives in ${CITADEL_DOCKERD_DIR:-/tmp/citadel-dockerd}/NAME with its own containerd,
# and puts its containers in the cgroup citadel-dockerd-NAME. Needs root. It has no bridge: run
# containers with --network none (or host). `stop` also cleans up after a daemon that was killed.
set -euo pipefail

usage() {
    sed -n '2,13p' "$0" >&2
    exit 2
}
die() {
    echo "dockerd-extra: $*" >&2
    exit 1
}

[[ $# -ge 2 ]] || usage
cmd=$1
name=$2
[[ $name =~ ^[A-Za-z0-9_-]{1,24}$ ]] || die "name must be 1-24 of [A-Za-z0-9_-]: $name"

dir=${CITADEL_DOCKERD_DIR:-/tmp/citadel-dockerd}/$name
addr=unix://$dir/docker.sock
cgroup=citadel-dockerd-$name
containerd_sock=$dir/exec/containerd/containerd.sock

# The daemon's pid, if it is running: the pid file alone may be stale after a kill.
daemon_pid() {
    local pid
    pid=$(cat "$dir/docker.pid" 2>/dev/null) || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--exec-root $dir/exec " || return 1
    echo "$pid"
}

answers() { timeout 5 docker -H "$addr" version >/dev/null 2>&1; }

start() {
    if daemon_pid >/dev/null; then
        echo "$addr"
        return
    fi
    [[ $(id -u) -eq 0 ]] || die "dockerd needs root"
    local dockerd
    dockerd=$(command -v dockerd || echo /usr/sbin/dockerd)
    mkdir -p "$dir"
    # Our own config file keeps /etc/docker/daemon.json (and its data-root) out; our own key
    # gives the daemon an engine ID of its own.
    printf '{"deprecated-key-path": "%s/key.json"}\n' "$dir" >"$dir/daemon.json"
    # Its own network namespace: with --bridge=none, dockerd deletes any docker0 it can see,
    # and in the machine's namespace that is the system daemon's bridge.
    setsid unshare --net -- "$dockerd" \
        --config-file "$dir/daemon.json" \
        --data-root "$dir/data" \
        --exec-root "$dir/exec" \
        --pidfile "$dir/docker.pid" \
        -H "$addr" \
        --bridge=none --iptables=false --ip6tables=false \
        --cgroup-parent "$cgroup" \
        >>"$dir/dockerd.log" 2>&1 </dev/null &
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        if answers; then
            echo "$addr"
            return
        fi
        sleep 0.2
    done
    echo "dockerd-extra: $name did not answer within 30 s; last log lines:" >&2
    tail -n 20 "$dir/dockerd.log" >&2
    exit 1
}

# Kills what a killed daemon leaves running, then removes cgroups, mounts and shim sockets.
sweep() {
    local roots=(/sys/fs/cgroup /sys/fs/cgroup/*) root pid shim_sockets
    for root in "${roots[@]}"; do
        [[ -d $root/$cgroup ]] || continue
        find "$root/$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null |
            while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done
    done
    pkill -KILL -f -- "-address $containerd_sock\$" || true
    shim_sockets=$(cat "$dir"/exec/containerd/daemon/io.containerd.runtime.v2.task/*/*/address \
        2>/dev/null | sed -n 's|^unix://\(/run/containerd/s/.*\)|\1|p' || true)
    sleep 0.2
    for root in "${roots[@]}"; do
        [[ -d $root/$cgroup ]] || continue
        for _ in 1 2 3 4 5; do
            find "$root/$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null && break
            sleep 0.2
        done
    done
    awk '{print $5}' /proc/self/mountinfo | grep -F "$dir/" | sort -r |
        while read -r point; do umount -l "$point" || true; done
    [[ -z $shim_sockets ]] || rm -f $shim_sockets
}

stop() {
    local pid ids
    if pid=$(daemon_pid); then
        # Without containers dockerd shuts down at once; with them it waits out their stop timeouts.
        ids=$(timeout 10 docker -H "$addr" ps -aq 2>/dev/null || true)
        # shellcheck disable=SC2086 # one id per word
        [[ -z $ids ]] || timeout 30 docker -H "$addr" rm -f $ids >/dev/null 2>&1 || true
        kill -TERM "$pid"
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    [[ -d $dir ]] || return 0
    sweep
    rm -rf "$dir"
}

case $cmd in
start) start ;;
addr)
    daemon_pid >/dev/null || die "$name is not running"
    echo "$addr"
    ;;
load)
    daemon_pid >/dev/null || die "$name is not running"
    docker save "${3:-citadel-test/busybox:1}" | timeout 120 docker -H "$addr" load
    ;;
stop) stop ;;
*) usage ;;
esac
