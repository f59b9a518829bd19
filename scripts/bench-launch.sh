#!/usr/bin/env bash
# Real launches on this machine's Docker engine, side by side in one run:
#
#   1. citadel: a controller (dialing no engine) and one `citadel agent` on the local socket;
#      N requests (`sleep 600`, 0.1 cpus, 32 MB, "launch": true) written in one etcd
#      transaction; timed until the agent reports all N running (runs/<engine>/*).
#   2. citadel's older way: a leader with `--docker` that dials the engine itself (no agent),
#      under another prefix; timed until every decision records its container running.
#   3. docker run -d, N times, P in parallel (xargs -P), same image, limits and command.
#
# Rounds alternate (citadel, docker, citadel, docker, …) so that a drifting machine weighs on
# both alike; every container is removed between rounds. Prints one line per round and the
# medians, and the ratio of citadel's rate to docker run's.
#
#   scripts/bench-launch.sh [N] [ROUNDS]        defaults: 100 containers, 2 rounds each
#   CITADEL=target/release/citadel P=8 scripts/bench-launch.sh
#
# Needs etcd, etcdctl and a Docker engine (scripts/install-deps.sh), and builds the local test
# image (scripts/test-image.sh): nothing is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-100}
rounds=${2:-2}
parallel=${P:-8}
citadel=${CITADEL:-target/release/citadel}
image=$(bash scripts/test-image.sh)
export ETCDCTL_API=3

[[ -x $citadel ]] || cargo build --release --bin citadel
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    docker ps -aq --filter label=citadel.bench-launch=1 | xargs -r docker rm -f >/dev/null 2>&1 || true
    for p in /bench-launch /bench-launch-leader; do
        docker ps -aq --filter "label=citadel.cluster=$p" | xargs -r docker rm -f >/dev/null 2>&1 || true
    done
    [[ ${KEEP:-} ]] || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

cport=$(free_port)
pport=$(free_port)
EP="http://127.0.0.1:$cport"
(
    while read -r var; do unset "$var"; done < <(compgen -e | grep '^ETCD_' || true)
    exec etcd --name bench --data-dir "$tmp/etcd" \
        --listen-client-urls "$EP" --advertise-client-urls "$EP" \
        --listen-peer-urls "http://127.0.0.1:$pport" \
        --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "bench=http://127.0.0.1:$pport" \
        --logger zap --log-outputs stderr
) >"$tmp/etcd.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 100; i++)); do
    etcdctl --endpoints "$EP" --dial-timeout 1s endpoint health >/dev/null 2>&1 && break
    sleep 0.2
done

prefix=/bench-launch
C=("$citadel" --etcd "$EP" --prefix "$prefix")
RUST_LOG=warn "${C[@]}" controller --id bench-ctl --listen 127.0.0.1:0 >"$tmp/controller.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "${C[@]}" agent --engine bench-local --cpus 64 --memory 65536 \
    --max-launches "$parallel" >"$tmp/agent.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 150; i++)); do
    etcdctl --endpoints "$EP" get "$prefix/health/bench-local" --print-value-only 2>/dev/null | grep -q agent && break
    sleep 0.2
done

# The older way, beside it: a leader that dials the local engine itself.
lprefix=/bench-launch-leader
L=("$citadel" --etcd "$EP" --prefix "$lprefix")
"${L[@]}" engine add local --addr unix:///var/run/docker.sock --cpus 64 --memory 65536 >/dev/null
RUST_LOG=warn "${L[@]}" controller --id bench-leader --listen 127.0.0.1:0 --docker \
    >"$tmp/leader.log" 2>&1 &
pids+=($!)

now() { date +%s.%N; }
running() {
    etcdctl --endpoints "$EP" get --prefix "$prefix/runs/bench-local/" --print-value-only |
        grep -c '"state":"running"' || true
}
leader_running() {
    etcdctl --endpoints "$EP" get --prefix "$lprefix/decisions/" --print-value-only |
        grep -c '"state":"running"' || true
}
containers() { docker ps -aq --filter "label=citadel.cluster=${1:-$prefix}" | wc -l; }

citadel_round() {
    local txn="$tmp/txn" r="$1" prefix="${2:-$prefix}" count="${3:-running}"
    # etcdctl txn's own format: compares, a blank line, the puts (values double-quoted, inner
    # quotes escaped), a blank line, no failure ops, a blank line.
    { echo; for ((i = 0; i < n; i++)); do
        printf 'put %s/requests/r%s-%03d "{\\"image\\":\\"%s\\",\\"cpus\\":0.1,\\"memory\\":32,\\"type\\":\\"service\\",\\"launch\\":true,\\"entrypoint\\":[\\"sleep\\",\\"600\\"]}"\n' \
            "$prefix" "$r" "$i" "$image"
      done; echo; echo; } >"$txn"
    local t0 t1
    t0=$(now)
    etcdctl --endpoints "$EP" txn <"$txn" >/dev/null
    for ((i = 0; i < 1200; i++)); do # up to 120 s
        [[ $($count) -ge $n ]] && break
        sleep 0.1
    done
    t1=$(now)
    [[ $($count) -ge $n ]] || { echo "bench-launch: not all running; see $tmp" >&2; exit 1; }
    etcdctl --endpoints "$EP" del --prefix "$prefix/requests/" >/dev/null
    for ((i = 0; i < 1200; i++)); do
        [[ $(containers "$prefix") -eq 0 ]] && break
        sleep 0.1
    done
    awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }'
}

docker_round() {
    local r="$1" t0 t1
    t0=$(now)
    seq -w 0 $((n - 1)) | xargs -P "$parallel" -I{} docker run -d --name "bench-dr-$r-{}" \
        --label citadel.bench-launch=1 --cpus 0.1 --memory 32m "$image" sleep 600 >/dev/null
    t1=$(now)
    docker ps -aq --filter label=citadel.bench-launch=1 | xargs -r docker rm -f >/dev/null
    awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }'
}

ours=()
leader=()
theirs=()
for ((r = 1; r <= rounds; r++)); do
    c=$(citadel_round "$r")
    l=$(citadel_round "$r" "$lprefix" leader_running)
    d=$(docker_round "$r")
    ours+=("$c")
    leader+=("$l")
    theirs+=("$d")
    printf 'round %d: citadel agent %6.2f s   leader --docker %6.2f s   docker run -d (x%d, %d parallel) %6.2f s\n' \
        "$r" "$c" "$l" "$n" "$parallel" "$d"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mc=$(median "${ours[@]}")
ml=$(median "${leader[@]}")
md=$(median "${theirs[@]}")
printf 'median, %d containers: citadel agent %.2f s, leader --docker %.2f s, docker run %.2f s\n' "$n" "$mc" "$ml" "$md"
printf 'citadel with an agent launches at %.2f of docker run'"'"'s rate (the leader dialing Docker: %.2f)\n' \
    "$(awk -v a="$md" -v b="$mc" 'BEGIN { print a / b }')" "$(awk -v a="$md" -v b="$ml" 'BEGIN { print a / b }')"
