#!/usr/bin/env bash
# The main job, end to end, against a real local etcd:
#
#   1. builds citadel (release),
#   2. starts a throwaway etcd 3.4 on free loopback ports (temp data dir,
#      revision auto-compaction keeping 1000 revisions),
#   3. starts 3 controller replicas (one wins the leader election),
#   4. registers 3 engines (their addresses are only stored, nothing connects),
#   5. submits the sample request with plain etcdctl,
#   6. waits for the scheduling decision and prints it, the leader and `citadel ls`,
#   7. prints each replica's status page and /metrics address (a free port each).
#
# With --docker the replicas run with --docker, the engine is this machine's Docker engine
# (probed for its cpus and memory), and the request is launched: a local busybox image
# (scripts/test-image.sh; no registry is needed) runs, `docker ps` shows it, and deleting the
# request stops it.
#
# Everything is stopped and the temp dir removed on exit.
#
# Usage: scripts/demo.sh [--keep] [--docker]
#   --keep     leave etcd and the replicas running until Ctrl-C
#   --docker   launch the container on this machine's Docker engine
set -euo pipefail

keep=false
docker=false
for arg in "$@"; do
    case "$arg" in
    --keep) keep=true ;;
    --docker) docker=true ;;
    -h | --help)
        sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "demo: unknown argument: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
citadel="$repo/target/release/citadel"
export ETCDCTL_API=3

step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n==> [%d] %s\n' "$step_no" "$*"
}

# Prints a command so that it can be copied into a shell.
quote_cmd() {
    local out="" arg
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            out+="$arg "
        else
            out+="'${arg//\'/\'\\\'\'}' "
        fi
    done
    printf '%s\n' "${out% }"
}

# Shows a command, then runs it.
run() {
    printf '$ %s\n' "$(quote_cmd "$@")"
    "$@"
}

# Shows an etcdctl command (as copyable `ETCDCTL_API=3 etcdctl ...`), then runs it.
ectl() {
    printf '$ ETCDCTL_API=3 %s\n' "$(quote_cmd etcdctl "$@")"
    etcdctl "$@"
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/citadel-demo.XXXXXX")
etcd_pid=""
replica_pids=()

stop_pid() { # stop_pid PID NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 name=$2 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: $name (pid $pid) ignored SIGTERM, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

show_logs() {
    local f
    for f in "$tmp"/*.log; do
        [[ -e $f ]] || continue
        printf -- '--- %s (last 20 lines) ---\n' "$(basename "$f")" >&2
        tail -n 20 "$f" >&2 || true
    done
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # Show the logs on failure, but not after an interrupt (Ctrl-C / SIGTERM).
    if ((status != 0 && status != 130 && status != 143)) && [[ -d $tmp ]]; then
        echo >&2
        echo "demo: failed (exit $status); logs:" >&2
        show_logs
    fi
    if ((${#replica_pids[@]} > 0)) || [[ -n $etcd_pid ]]; then
        printf '\n==> stopping the replicas and etcd\n'
    fi
    local i
    for i in "${!replica_pids[@]}"; do
        stop_pid "${replica_pids[$i]}" "replica-$((i + 1))"
    done
    if [[ -n $etcd_pid ]]; then
        stop_pid "$etcd_pid" etcd
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "demo: $*" >&2
    exit 1
}

# A port on 127.0.0.1 nothing is listening on right now.
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

step "dependencies (scripts/install-deps.sh --demo: etcd and what the build needs)"
bash scripts/install-deps.sh --demo
echo "etcd $(etcd --version | sed -n 's/^etcd Version: //p'), $(protoc --version)"

step "build: cargo build --release"
cargo build --release
[[ -x $citadel ]] || fail "$citadel was not built"

step "start a local etcd (data and logs in $tmp)"
started=false
for attempt in 1 2 3 4; do
    client_port=$(free_port)
    peer_port=$(free_port)
    [[ $client_port != "$peer_port" ]] || continue
    EP="http://127.0.0.1:$client_port"
    peer="http://127.0.0.1:$peer_port"
    rm -rf "$tmp/etcd-data"
    # etcd refuses ETCD_* variables that conflict with flags.
    (
        while read -r var; do unset "$var"; done < <(compgen -e | grep '^ETCD_' || true)
        exec etcd \
            --name demo \
            --data-dir "$tmp/etcd-data" \
            --listen-client-urls "$EP" \
            --advertise-client-urls "$EP" \
            --listen-peer-urls "$peer" \
            --initial-advertise-peer-urls "$peer" \
            --initial-cluster "demo=$peer" \
            --initial-cluster-state new \
            --auto-compaction-mode=revision \
            --auto-compaction-retention=1000 \
            --logger zap --log-outputs stderr
    ) >"$tmp/etcd.log" 2>&1 &
    etcd_pid=$!
    for ((i = 0; i < 100; i++)); do # up to 20 s
        if ! kill -0 "$etcd_pid" 2>/dev/null; then
            break
        fi
        if etcdctl --endpoints "$EP" --dial-timeout 1s endpoint health >/dev/null 2>&1; then
            started=true
            break
        fi
        sleep 0.2
    done
    $started && break
    if ! kill -0 "$etcd_pid" 2>/dev/null && grep -q 'address already in use' "$tmp/etcd.log"; then
        wait "$etcd_pid" 2>/dev/null || true
        etcd_pid=""
        echo "port taken, retrying with other ports (attempt $attempt)"
        continue
    fi
    fail "etcd did not become healthy on $EP"
done
$started || fail "could not find free ports for etcd"
echo "etcd pid $etcd_pid listening on $EP"
ectl --endpoints "$EP" endpoint status -w table

# Three replicas on one host: each serves its status page on a free port of its own.
controller_flags=(--lease-ttl 3 --listen 127.0.0.1:0)
if $docker; then
    controller_flags+=(--docker)
fi
step "start 3 controller replicas (lease TTL 3 s)$($docker && echo ", --docker" || true)"
export RUST_LOG="${RUST_LOG:-info}"
for n in 1 2 3; do
    printf '$ %s > %s 2>&1 &\n' \
        "$(quote_cmd "$citadel" --etcd "$EP" controller --id "replica-$n" "${controller_flags[@]}")" \
        "$tmp/replica-$n.log"
    "$citadel" --etcd "$EP" controller --id "replica-$n" "${controller_flags[@]}" \
        >"$tmp/replica-$n.log" 2>&1 &
    replica_pids+=($!)
done
sleep 1
for i in "${!replica_pids[@]}"; do
    kill -0 "${replica_pids[$i]}" 2>/dev/null || fail "replica-$((i + 1)) exited early"
done
echo "replicas running: pids ${replica_pids[*]}"

# The address each replica chose, from its log line "http: serving … url=http://…/".
status_urls=()
for n in 1 2 3; do
    url=""
    for _ in $(seq 50); do
        url=$(grep -o 'url=http://[0-9.:]*/' "$tmp/replica-$n.log" 2>/dev/null | head -n 1 | cut -d= -f2 || true)
        [[ -n $url ]] && break
        sleep 0.1
    done
    status_urls+=("${url:-(not found in $tmp/replica-$n.log)}")
done

name=redis-1
request='{"image": "crosbymichael/redis", "cpus": "0.2", "memory": 512, "type": "service"}'
if $docker; then
    step "build the local image (scripts/test-image.sh) and register this machine's Docker engine"
    image=$(bash scripts/test-image.sh)
    run "$citadel" --etcd "$EP" engine add local --addr unix:///var/run/docker.sock --label zone=a
    name=web-1
    request='{"image": "'"$image"'", "cpus": 0.2, "memory": 64, "type": "service", "launch": true, "entrypoint": ["sleep", "600"]}'
else
    step "register 3 engines"
    zones=(a b c)
    for n in 1 2 3; do
        run "$citadel" --etcd "$EP" engine add "engine-$n" \
            --addr "tcp://127.0.1.$n:2375" --cpus 4 --memory 8192 --label "zone=${zones[$((n - 1))]}"
    done
fi

step "submit the request with etcdctl"
ectl --endpoints "$EP" put "/citadel/requests/$name" "$request"

step "wait for the decision on /citadel/decisions/$name (up to 30 s)"
decision=""
deadline=$((SECONDS + 30))
while ((SECONDS < deadline)); do
    decision=$(etcdctl --endpoints "$EP" get "/citadel/decisions/$name" --print-value-only 2>/dev/null || true)
    # With --docker, wait until the launch is recorded too.
    if [[ -n $decision ]] && { ! $docker || [[ $decision == *'"container_id"'* ]]; }; then
        break
    fi
    sleep 0.2
done
[[ -n $decision ]] || fail "no decision for $name after 30 s"
get_decision=(etcdctl --endpoints "$EP" get "/citadel/decisions/$name" --print-value-only)
printf '$ ETCDCTL_API=3 %s\n' "$(quote_cmd "${get_decision[@]}")"
if command -v python3 >/dev/null 2>&1 && printf '%s\n' "$decision" | python3 -m json.tool 2>/dev/null; then
    :
else
    printf '%s\n' "$decision"
fi

step "the election: every replica campaigns; the key with the lowest create revision leads"
ectl --endpoints "$EP" get --prefix /citadel/leader

step "citadel ls"
run "$citadel" --etcd "$EP" ls

engine=$(printf '%s\n' "$decision" | grep -o '"resource":{"id":"[^"]*"' | cut -d'"' -f6 || true)
if [[ -n $engine ]]; then
    step "what $engine holds (each placed decision carries its reservation)"
    run "$citadel" --etcd "$EP" engine show "$engine"
fi

if $docker; then
    step "the container, as Docker sees it"
    run docker ps --filter "label=citadel.request=$name"
    step "delete the request: the leader frees the reservation and stops the container"
    ectl --endpoints "$EP" del "/citadel/requests/$name"
    deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        [[ -z $(docker ps -aq --filter "label=citadel.request=$name") ]] && break
        sleep 0.5
    done
    run docker ps -a --filter "label=citadel.request=$name"
    [[ -z $(docker ps -aq --filter "label=citadel.request=$name") ]] ||
        fail "the container of $name is still there 30 s after its request was deleted"
fi

step "status pages (and /metrics, /healthz, /readyz, /api/state under each)"
for n in 1 2 3; do
    printf 'replica-%d  %s\n' "$n" "${status_urls[$((n - 1))]}"
done

step "etcdctl commands used (copy them)"
cat <<EOF
ETCDCTL_API=3 $(quote_cmd etcdctl --endpoints "$EP" put "/citadel/requests/$name" "$request")
ETCDCTL_API=3 $(quote_cmd "${get_decision[@]}")
ETCDCTL_API=3 $(quote_cmd etcdctl --endpoints "$EP" get --prefix /citadel/leader)
ETCDCTL_API=3 $(quote_cmd etcdctl --endpoints "$EP" get --prefix /citadel/)
EOF

step "replica logs (last 5 lines each)"
for n in 1 2 3; do
    printf -- '--- replica-%d ---\n' "$n"
    tail -n 5 "$tmp/replica-$n.log" || true
done

if $keep; then
    step "cluster left running (--keep); press Ctrl-C to stop it"
    trap 'echo; exit 0' INT TERM
    cat <<EOF
etcd endpoint: $EP
logs:          $tmp/{etcd,replica-1,replica-2,replica-3}.log

Try:
  export ETCDCTL_API=3 CITADEL_ETCD=$EP
  $(quote_cmd "$citadel" --etcd "$EP" ls)
  $(quote_cmd etcdctl --endpoints "$EP" put /citadel/requests/web-1 '{"image": "nginx", "cpus": "0.5", "memory": 256, "type": "service"}')
  $(quote_cmd etcdctl --endpoints "$EP" get /citadel/decisions/web-1 --print-value-only)
  $(quote_cmd etcdctl --endpoints "$EP" watch --prefix /citadel/decisions/)
  $(quote_cmd etcdctl --endpoints "$EP" get --prefix /citadel/leader)
  kill <pid>   # stop the leader replica (pids: ${replica_pids[*]}) and watch another take over
EOF
    while kill -0 "$etcd_pid" 2>/dev/null; do
        sleep 1 &
        wait $! || true
    done
    fail "etcd exited unexpectedly"
fi

step "done"
