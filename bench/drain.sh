#!/usr/bin/env bash
# Outgoing benchmark on loopback: how fast a full tambo (tambod with every
# worker, release build) and Debian's chasquid send queued mail for a
# remote domain into Postfix's smtp-sink. See bench/README.md for the
# method; in short, in a private network namespace where remote.test's MX
# (served by dnsmasq) is 127.0.0.1:25:
#
#  drain  N messages of 10 KiB are queued while nothing listens on port 25
#         (every first attempt fails: connection refused), then smtp-sink
#         starts and the sender is told to go (tambo: `tambo queue flush`;
#         chasquid, which has no flush: a restart, which sends its whole
#         queue at once). Timed until smtp-sink has received N messages.
#         chasquid 1.11 holds at most 200 messages (hard-coded), so the
#         drain is run for N (tambo only) and for 200 (both).
#  relay  smtp-sink is up; smtp-source sends N messages over C sessions;
#         timed from the first connection until smtp-sink has N
#         (acceptance and delivery together).
#
# Every message goes to alice@example.com, an alias for bob@remote.test.
#
# Usage: bench/drain.sh                  (as root; N=10000)
#        N=2000 CONCURRENCY=32 SMALL=200 SERVERS="tambo chasquid" KEEP=1 bench/drain.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$PATH:/usr/sbin:/sbin"
N=${N:-10000}
SMALL=${SMALL:-200}
CONCURRENCY=${CONCURRENCY:-32}
SERVERS=${SERVERS:-"tambo chasquid"}
SIZE=10240

need() { command -v "$1" >/dev/null 2>&1 || { echo "drain: $1 is missing (apt-get install $2)" >&2; exit 1; }; }

if [ -z "${DRAIN_NS:-}" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "drain: run as root (private network and mount namespace, port 25, tambo's worker users)" >&2
        exit 1
    fi
    need unshare util-linux
    need ip iproute2
    need smtp-source postfix
    need smtp-sink postfix
    need dnsmasq dnsmasq
    need openssl openssl
    need python3 python3
    [[ " $SERVERS " == *" chasquid "* ]] && need chasquid chasquid
    echo "== building tambo (release)"
    cargo build --release --bins -q
    exec unshare -n -m --propagation private env DRAIN_NS=1 bash "$0" "$@"
fi

# From here on: a private network namespace (only lo) and mount namespace.
ip link set lo up
WORK=$(mktemp -d "$ROOT/target/drain.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    stop_pids
    [ -n "${KEEP:-}" ] && echo "drain: kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
# Message queues of 10,000 sessions' worth of sockets and files.
ulimit -n 65536 2>/dev/null || true

# Fake DNS: remote.test MX 10 mx.remote.test, which is 127.0.0.1; every
# other name NXDOMAIN (SPF, DMARC, MTA-STS lookups get their answer at
# once). Both servers use it through /etc/resolv.conf.
echo "nameserver 127.0.0.1" > "$WORK/resolv.conf"
mount --bind "$WORK/resolv.conf" /etc/resolv.conf
dnsmasq --keep-in-foreground --port=53 --listen-address=127.0.0.1 --bind-interfaces \
    --no-resolv --no-hosts --local=/test/ --address=/#/ --local-ttl=300 --user=root \
    --mx-host=remote.test,mx.remote.test,10 --host-record=mx.remote.test,127.0.0.1 \
    --pid-file="$WORK/dnsmasq.pid" 2>"$WORK/dnsmasq.log" &
PIDS+=($!)

now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
# wait_port, make_cert, stop_pids
source bench/lib.sh
# chasquid.conf (tambo reads the same file).
write_conf() { # dir smtp-port data-dir extra
    cat > "$1/chasquid.conf" <<EOF
hostname: "localhost"
smtp_address: "127.0.0.1:$2"
submission_address: "127.0.0.1:$(($2 + 1))"
submission_over_tls_address: "127.0.0.1:$(($2 + 2))"
data_dir: "$3"
mail_delivery_agent_bin: "/bin/true"
mail_log_path: "$1/../mail.log"
$4
EOF
}

declare -A PORT=([tambo]=10025 [chasquid]=11025)
declare -A SPID

setup_tambo() {
    local d=$WORK/tambo
    mkdir -p "$d/config/domains/example.com" "$d/data"
    make_cert "$d/config/certs/localhost"
    echo "alice: bob@remote.test" > "$d/config/domains/example.com/aliases"
    write_conf "$d/config" "${PORT[tambo]}" "$d/data" "run_dir: \"$d/run\"
max_queue_items: 1000000"
    packaging/create-users.sh >/dev/null
    chmod -R a+rX "$d/config"
}
start_tambo() {
    local d=$WORK/tambo
    target/release/tambod --config_dir="$d/config" 2>>"$d/tambod.log" &
    SPID[tambo]=$!
    PIDS+=($!)
    wait_port "${PORT[tambo]}"
    # queued answers on the control socket once it has loaded the queue.
    for _ in $(seq 1 300); do
        target/release/tambo -C "$d/config" queue list >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "drain: tambo's control socket does not answer" >&2
    return 1
}

setup_chasquid() {
    local d=$WORK/chasquid
    mkdir -p "$d/config/domains/example.com" "$d/data"
    make_cert "$d/config/certs/localhost"
    echo "alice: bob@remote.test" > "$d/config/domains/example.com/aliases"
    write_conf "$d/config" "${PORT[chasquid]}" "$d/data" ""
}
start_chasquid() {
    local d=$WORK/chasquid
    chasquid -config_dir="$d/config" -logfile="$d/chasquid.log" &
    SPID[chasquid]=$!
    PIDS+=($!)
    [ "${1:-}" = nowait ] || wait_port "${PORT[chasquid]}"
}

stop_server() {
    local p=${SPID[$1]}
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
}

queued_count() {
    case $1 in
        tambo) find "$WORK/tambo/data/queue" -maxdepth 1 -name '*.data' | wc -l ;;
        chasquid) find "$WORK/chasquid/data/queue" -maxdepth 1 -name 'm:*' | wc -l ;;
    esac
}
temp_failures() { grep -c 'failed (temporary)' "$WORK/$1/mail.log" 2>/dev/null || true; }

# smtp-sink on 127.0.0.1:25, its counters read by sink-watch.py.
SINK_PID=
WATCH_PID=
SINKDIR=
start_sink() { # name target
    SINKDIR=$WORK/sink.$1
    mkdir -p "$SINKDIR"
    mkfifo "$SINKDIR/fifo"
    # The sink stands for other machines: it and its watcher get a higher
    # priority than the senders, so that on a loaded machine the time is
    # the sender's, not the sink's wait for a CPU.
    nice -n -10 python3 bench/sink-watch.py "$SINKDIR" "$2" <"$SINKDIR/fifo" &
    WATCH_PID=$!
    PIDS+=($!)
    nice -n -10 smtp-sink -u nobody -c -m 1024 127.0.0.1:25 1024 >"$SINKDIR/fifo" 2>"$SINKDIR/sink.log" &
    SINK_PID=$!
    PIDS+=($!)
    wait_port 25
}
stop_sink() {
    kill "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
    wait "$WATCH_PID" 2>/dev/null || true
}
# Waits until the sink has seen its target; prints the time it did.
wait_reached() { # timeout-seconds
    local end
    end=$(calc "$(now) + $1")
    while [ ! -s "$SINKDIR/reached" ]; do
        if [ "$(calc "$(now) > $end")" = True ]; then
            echo "drain: timeout: the sink saw $(cut -d' ' -f1 "$SINKDIR/count" 2>/dev/null || echo 0) messages" >&2
            return 1
        fi
        sleep 0.02
    done
    cut -d' ' -f1 "$SINKDIR/reached"
}
wait_empty() { # server timeout-seconds; prints the time the queue was empty
    local end
    end=$(calc "$(now) + $2")
    while [ "$(queued_count "$1")" != 0 ]; do
        if [ "$(calc "$(now) > $end")" = True ]; then
            echo "drain: $1 still has $(queued_count "$1") messages queued" >&2
            now
            return 1
        fi
        sleep 0.05
    done
    now
}

# Queue COUNT messages while nothing listens on port 25, and wait until
# every one has had its first (failed) attempt.
load() { # server count
    local s=$1 c=$2 before out
    before=$(temp_failures "$s")
    if ! out=$(smtp-source -s "$CONCURRENCY" -m "$c" -l "$SIZE" -f bench@remote.test \
        -t alice@example.com "127.0.0.1:${PORT[$s]}" 2>&1); then
        echo "drain: loading $s failed: $out" >&2
        return 1
    fi
    for _ in $(seq 1 1200); do
        [ "$(temp_failures "$s")" -ge $((before + c)) ] && break
        sleep 0.1
    done
    local q
    q=$(queued_count "$s")
    [ "$q" -ge "$c" ] || { echo "drain: $s has $q messages queued, expected $c" >&2; return 1; }
}

declare -A RESULT
record() { # key count t0 t-sink t-empty
    RESULT[$1]=$(calc "round($2/($4-$3))")
    printf "   %-26s %6d msg in %6.2f s = %6s msg/s (queue empty after %.2f s; %s SMTP sessions)\n" \
        "$1" "$2" "$(calc "$4-$3")" "${RESULT[$1]}" "$(calc "$5-$3")" "$(cut -d' ' -f2 "$SINKDIR/count")"
}
timeout_for() { calc "max(120, $1 // 20)"; }

# drain: the queue is full, the sink starts, the sender is told to go.
drain_phase() { # server count
    local s=$1 c=$2 t0 t1 t2
    echo "== $s: queueing $c messages (port 25 closed)"
    load "$s" "$c" || return 1
    [ "$s" = chasquid ] && stop_server chasquid
    start_sink "$s-drain-$c" "$c"
    t0=$(now)
    case $s in
        tambo) target/release/tambo -C "$WORK/tambo/config" queue flush >/dev/null ;;
        chasquid) start_chasquid nowait ;;
    esac
    t1=$(wait_reached "$(timeout_for "$c")") || { stop_sink; return 1; }
    t2=$(wait_empty "$s" 120) || true
    stop_sink
    record "$s drain $c" "$c" "$t0" "$t1" "$t2"
}

# relay: the sink is up; smtp-source sends N, timed until the sink has N.
relay_phase() { # server count
    local s=$1 c=$2 t0 ta t1 t2 out
    start_sink "$s-relay" "$c"
    echo "== $s: relaying $c messages (smtp-source -s $CONCURRENCY)"
    t0=$(now)
    if ! out=$(smtp-source -s "$CONCURRENCY" -m "$c" -l "$SIZE" -f bench@remote.test \
        -t alice@example.com "127.0.0.1:${PORT[$s]}" 2>&1); then
        echo "drain: smtp-source into $s failed: $out" >&2
        stop_sink
        return 1
    fi
    ta=$(now)
    t1=$(wait_reached "$(timeout_for "$c")") || { stop_sink; return 1; }
    t2=$(wait_empty "$s" 120) || true
    stop_sink
    RESULT[$s accept $c]=$(calc "round($c/($ta-$t0))")
    record "$s relay $c" "$c" "$t0" "$t1" "$t2"
    printf "   %-26s (smtp-source done after %.2f s: %s msg/s accepted)\n" "" \
        "$(calc "$ta-$t0")" "${RESULT[$s accept $c]}"
}

echo "== $N messages of $SIZE bytes to alice@example.com (alias for bob@remote.test)"
for s in $SERVERS; do
    "setup_$s"
    "start_$s"
    if [ "$s" = tambo ]; then
        drain_phase tambo "$N" || echo "   tambo drain $N failed" >&2
    fi
    if [ "$SMALL" -gt 0 ]; then
        drain_phase "$s" "$SMALL" || echo "   $s drain $SMALL failed" >&2
        # chasquid was restarted by the drain (its only way to retry now).
    fi
    relay_phase "$s" "$N" || echo "   $s relay $N failed" >&2
    stop_server "$s"
done

echo
printf "%-22s %10s %10s %16s\n" "msg/s" tambo chasquid tambo/chasquid
KEYS=("drain $N")
[ "$SMALL" -gt 0 ] && KEYS+=("drain $SMALL")
KEYS+=("relay $N")
for k in "${KEYS[@]}"; do
    a=${RESULT[tambo $k]:-}
    b=${RESULT[chasquid $k]:-}
    r=-
    [ -n "$a" ] && [ -n "$b" ] && r=$(calc "f'{$a/$b:.2f}x'")
    [ -z "$b" ] && [ "$k" = "drain $N" ] && [ "$N" -gt 200 ] &&
        [[ " $SERVERS " == *" chasquid "* ]] && b="(max 200)"
    printf "%-22s %10s %10s %16s\n" "$k" "${a:--}" "${b:--}" "$r"
done
