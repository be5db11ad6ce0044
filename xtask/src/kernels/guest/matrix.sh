#!/bin/sh
# The kernel matrix's checks on one kernel: run by /init inside a QEMU guest, and natively on
# the host (xtask/src/kernels/host.rs), by busybox's sh in both cases.
#
# Environment: AGENT (scouter-agent), PYTHON (Debian's python3.11), BUSYBOX (for wget),
# MATRIX_DIR (this script, smoke_check.py and `variants`), WORK (a scratch directory),
# PORT (a free TCP port for the smoke test's server), READY_SECS (how long the agent may take
# to log `agent ready`).
#
# `variants` has one capture variant a line: its name, then the agent's extra arguments
# (split on blanks). For each variant: start the agent, wait for `agent ready` (attach), start
# `python3.11 -m http.server`, request /smoke-NAME once, and look for that request's SERVER
# span in the agent's store (smoke); then stop both.
#
# Results are lines `SCOUTER-MATRIX ...` on standard output, which xtask/src/kernels/results.rs
# parses (keep the two in step):
#   SCOUTER-MATRIX begin | end
#   SCOUTER-MATRIX kernel RELEASE
#   SCOUTER-MATRIX env KEY=VALUE...
#   SCOUTER-MATRIX load ok|failed [why]
#   SCOUTER-MATRIX attach VARIANT ok|failed [why]
#   SCOUTER-MATRIX smoke VARIANT ok|failed [why]
#   SCOUTER-MATRIX block-begin NAME ... SCOUTER-MATRIX block-end NAME   (output kept for the report)

exec 2>&1
MARK=SCOUTER-MATRIX
# The agent's listeners are not what the matrix tests, and on the host they would collide with
# another agent's (an agent of the end-to-end tests, or a developer's).
export SCOUTER_AGENT_METRICS_LISTEN=off SCOUTER_AGENT_RECEIVE_GRPC=off SCOUTER_AGENT_RECEIVE_HTTP=off
export NO_COLOR=1

mark() {
    echo "$MARK $*"
}

# Prints file $2 between block markers named $1.
block() {
    mark block-begin "$1"
    cat "$2" 2>/dev/null
    mark block-end "$1"
}

# Whether process $1 is running (a zombie is not).
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    [ "$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]
}

# SIGTERM to process $1 (named $2), SIGKILL if it is still there 30 s later; reaps it.
stop() {
    kill -TERM "$1" 2>/dev/null
    waited=0
    while alive "$1" && [ "$waited" -lt 30 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    if alive "$1"; then
        echo "$2 did not exit within 30 s of SIGTERM: killing it"
        kill -KILL "$1" 2>/dev/null
    fi
    wait "$1"
    echo "$2 exited ($?)"
}

# What the agent depends on, so that a failure can be told apart from a harness's mistake.
environment() {
    btf=no
    [ -e /sys/kernel/btf/vmlinux ] && btf=yes
    tracefs=no
    grep -qw tracefs /proc/filesystems && tracefs=yes
    cgroup2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
    lo=down
    [ $(($(cat /sys/class/net/lo/flags) & 1)) -eq 1 ] && lo=up
    cpus=$(grep -c '^processor' /proc/cpuinfo)
    mark env "btf=$btf" "tracefs=$tracefs" "cgroup2=${cgroup2:-none}" "lo=$lo" "cpus=$cpus"
}

check() {
    # Through a file: on a guest's console the agent would see a terminal and colour its log.
    "$AGENT" check --verifier </dev/null >"$WORK/check.out" 2>&1
    status=$?
    block check "$WORK/check.out"
    if [ "$status" -eq 0 ]; then
        mark load ok
    else
        mark load failed "(check exited $status)"
    fi
}

# Waits for agent $1 to log `agent ready` into $2; fails when it exits or time runs out.
wait_ready() {
    waited=0
    while [ "$waited" -lt "$READY_SECS" ]; do
        grep -q "agent ready" "$2" && return 0
        if ! alive "$1"; then
            grep -q "agent ready" "$2"
            return
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "the agent did not log 'agent ready' within $READY_SECS s"
    return 1
}

# Waits up to 60 s for server $1 to listen on 127.0.0.1:$PORT.
wait_listening() {
    local_address="0100007F:$(printf %04X "$PORT") 00000000:0000 0A"
    waited=0
    while [ "$waited" -lt 60 ]; do
        grep -q "$local_address" /proc/net/tcp && return 0
        alive "$1" || return 1
        sleep 1
        waited=$((waited + 1))
    done
    return 1
}

# The smoke test of variant $1 against the agent writing store $2.
smoke() {
    path=/smoke-$1
    out=$WORK/smoke-$1.out
    : >"$out"
    (cd "$WORK" && exec "$PYTHON" -m http.server "$PORT" --bind 127.0.0.1) </dev/null >"$WORK/server-$1.log" 2>&1 &
    server=$!
    result=1
    if wait_listening "$server"; then
        # A 404 (nothing is served at that path) makes wget exit 1; the span is what counts.
        "$BUSYBOX" wget -q -O /dev/null "http://127.0.0.1:$PORT$path" >>"$out" 2>&1
        waited=0
        while [ "$waited" -lt 30 ]; do
            sleep 2
            waited=$((waited + 2))
            if "$PYTHON" "$MATRIX_DIR/smoke_check.py" "$AGENT" "$2" "$path" >"$out.check" 2>&1; then
                result=0
                break
            fi
        done
        cat "$out.check" >>"$out"
    else
        echo "python -m http.server did not listen on 127.0.0.1:$PORT within 60 s" >>"$out"
    fi
    stop "$server" "http.server" >>"$out"
    echo "-- http.server's output:" >>"$out"
    cat "$WORK/server-$1.log" >>"$out"
    block "smoke-$1" "$out"
    return $result
}

# One capture variant: $1 its name, the rest the agent's extra arguments.
variant() {
    name=$1
    shift
    store=$WORK/traces-$name.db
    log=$WORK/agent-$name.log
    rm -f "$store" "$store-wal" "$store-shm"
    "$AGENT" run --store-path "$store" "$@" </dev/null >/dev/null 2>"$log" &
    agent=$!
    if wait_ready "$agent" "$log"; then
        mark attach "$name" ok
        if smoke "$name" "$store"; then
            mark smoke "$name" ok
        else
            mark smoke "$name" failed
        fi
    else
        mark attach "$name" failed
        mark smoke "$name" failed "(no agent)"
    fi
    stop "$agent" "the agent" >>"$log"
    block "agent-$name" "$log"
}

mark begin
mark kernel "$(uname -r)"
environment
check
while read -r name args <&3; do
    [ -n "$name" ] || continue
    # $args unquoted on purpose: one word per agent argument.
    variant "$name" $args
done 3<"$MATRIX_DIR/variants"
mark end
