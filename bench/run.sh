#!/usr/bin/env bash
# Side-by-side acceptance benchmark on loopback: tambo (release build),
# Debian's chasquid and (when it can be set up) a private Postfix instance,
# with the same workload: smtp-source, 10 KiB messages, one local recipient,
# a null delivery agent, concurrency 1, 8 and 32. Prints accepted messages
# per second for each server and the ratio tambo/peer, and the same for
# "accepted and delivered" (until the server's queue is empty again).
#
# Durability: tambo (journal fdatasync) and Postfix (fsync of the queue
# file) make each message durable before their 250; chasquid 1.11 never
# syncs its queue files (see bench/README.md).
#
# Usage: bench/run.sh            (N messages per run: N=2000 by default)
#        N=5000 CONCURRENCY="1 8 32" SERVERS="tambo chasquid postfix" bench/run.sh
#        TAMBO_BIN=/some/dir bench/run.sh   (tambo's binaries from there, no build)
#        TAMBO_EXTRA='delivery_nice: 0' bench/run.sh   (more lines for tambo's config)
set -euo pipefail
cd "$(dirname "$0")/.."
# Every server checks SPF for the sender's domain; with the machine's
# resolver an occasional lost UDP query stalls a server for 5 s, which
# would measure DNS, not the MTA. As root the bench runs in a private
# mount namespace whose /etc/resolv.conf points at a local dnsmasq that
# answers every name at once (NXDOMAIN).
if [ -z "${BENCH_NS:-}" ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null &&
    { command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ]; }; then
    exec unshare -m --propagation private env BENCH_NS=1 bash "$0" "$@"
fi
ROOT=$PWD
N=${N:-2000}
CONCURRENCY=${CONCURRENCY:-"1 8 32"}
SERVERS=${SERVERS:-"tambo chasquid postfix"}
SIZE=10240
export PATH="$PATH:/usr/sbin:/sbin"

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: $1 is missing (apt-get install $2)" >&2; exit 1; }; }
need smtp-source postfix
need openssl openssl
[[ " $SERVERS " == *" chasquid "* ]] && need chasquid chasquid

if [ -n "${TAMBO_BIN:-}" ]; then
    echo "== tambo binaries from $TAMBO_BIN (not built)"
else
    echo "== building tambo (release)"
    cargo build --release --bins -q
    TAMBO_BIN=target/release
fi

# The work directory lives on the same filesystem as the repository (not
# a tmpfs), so every server pays for real syncs.
WORK=$(mktemp -d "$ROOT/target/bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    stop_pids
    if [ -n "${POSTFIX_DIR:-}" ]; then postfix -c "$POSTFIX_DIR" stop >/dev/null 2>&1 || true; fi
    [ -n "${KEEP:-}" ] && echo "bench: kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

# The null delivery agent every server runs once per message: it reads
# the message and throws it away.
printf '#!/bin/sh\nexec cat >/dev/null\n' > "$WORK/null-mda"
chmod 755 "$WORK/null-mda"

if [ -n "${BENCH_NS:-}" ]; then
    echo "nameserver 127.0.0.77" > "$WORK/resolv.conf"
    mount --bind "$WORK/resolv.conf" /etc/resolv.conf
    # Authoritative for "test" (the sender's domain remote.test and every
    # _dmarc name under it): NXDOMAIN with the zone's SOA, whose 60 s
    # minimum lets a caching resolver keep the negative answer (RFC 2308),
    # as real zones do. The same resolver serves every server; whether a
    # server caches is its own business (chasquid 1.11 does not).
    # BENCH_DNS=plain: NXDOMAIN without SOA (nothing can be cached).
    # (--bind-dynamic: with --bind-interfaces, dnsmasq 2.90 does not treat
    # queries to 127.0.0.77 as authoritative and sends no SOA.)
    local_dns=(--auth-server=ns.bench.test,127.0.0.77 --auth-zone=test --auth-ttl=60)
    [ "${BENCH_DNS:-}" = plain ] && local_dns=()
    /usr/sbin/dnsmasq --keep-in-foreground --port=53 --listen-address=127.0.0.77 --bind-dynamic \
        --no-resolv --no-hosts --address=/#/ "${local_dns[@]}" ${KEEP:+--log-queries --log-facility=-} \
        --user=root --pid-file="$WORK/dnsmasq.pid" 2>"$WORK/dnsmasq.log" &
    PIDS+=($!)
    echo "== private resolver: dnsmasq on 127.0.0.77 (every name NXDOMAIN${local_dns:+, with the SOA of test.})"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port, make_cert, stop_pids
source bench/lib.sh

# Common chasquid.conf body (tambo reads the same format).
write_conf() { # dir smtp sub subtls datadir extra
    cat > "$1/chasquid.conf" <<EOF
hostname: "localhost"
smtp_address: "127.0.0.1:$2"
submission_address: "127.0.0.1:$3"
submission_over_tls_address: "127.0.0.1:$4"
data_dir: "$5"
mail_delivery_agent_bin: "$WORK/null-mda"
mail_delivery_agent_args: "%to%"
mail_log_path: "$1/mail.log"
$6
EOF
}

declare -A PORT
start_tambo() {
    local d=$WORK/tambo
    mkdir -p "$d/config/domains/example.com" "$d/data"
    make_cert "$d/config/certs/localhost"
    : > "$d/config/domains/example.com/aliases"
    "$TAMBO_BIN/tambo" -C "$d/config" user-add alice@example.com --password bench-pw >/dev/null
    PORT[tambo]=$(free_port)
    write_conf "$d/config" "${PORT[tambo]}" "$(free_port)" "$(free_port)" "$d/data" "run_dir: \"$d/run\"
max_queue_items: 1000000
${TAMBO_EXTRA:-}"
    if [ "$(id -u)" = 0 ]; then
        packaging/create-users.sh >/dev/null
        chmod -R a+rX "$d/config"
    fi
    "$TAMBO_BIN/tambod" --config_dir="$d/config" 2>"$d/tambod.log" &
    TAMBOD_PID=$!
    PIDS+=($!)
    wait_port "${PORT[tambo]}"
}

start_chasquid() {
    local d=$WORK/chasquid
    mkdir -p "$d/config/domains/example.com" "$d/data"
    make_cert "$d/config/certs/localhost"
    chasquid-util --configdir="$d/config" user-add alice@example.com --password=bench-pw >/dev/null
    PORT[chasquid]=$(free_port)
    write_conf "$d/config" "${PORT[chasquid]}" "$(free_port)" "$(free_port)" "$d/data" ""
    chasquid -config_dir="$d/config" -logfile="$d/chasquid.log" &
    PIDS+=($!)
    wait_port "${PORT[chasquid]}"
}

# A private Postfix instance: its own config and queue directory, smtpd
# on a loopback port, every local recipient discarded (the null agent).
start_postfix() {
    local d=$WORK/postfix
    POSTFIX_DIR=$d/etc
    mkdir -p "$POSTFIX_DIR" "$d/queue" "$d/data"
    PORT[postfix]=$(free_port)
    cat > "$POSTFIX_DIR/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $d/queue
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
myhostname = localhost
mydestination = example.com
inet_interfaces = loopback-only
inet_protocols = ipv4
local_recipient_maps =
local_transport = null
default_transport = null
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
maillog_file = $d/maillog
maillog_file_prefixes = $d
alias_maps =
alias_database =
smtpd_client_connection_rate_limit = 0
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 100
EOF
    # The packaged master.cf, without chroot, smtpd on our port.
    awk -v port="${PORT[postfix]}" '
        /^[a-z0-9]/ && NF >= 8 { if ($1 == "smtp" && $2 == "inet") $1 = "127.0.0.1:" port; $5 = "n" }
        { print }' /etc/postfix/master.cf > "$POSTFIX_DIR/master.cf" || return 1
    printf 'null unix - n n - - pipe\n  flags= user=nobody argv=%s\n' "$WORK/null-mda" >> "$POSTFIX_DIR/master.cf"
    chown root:root "$d/queue"
    postfix -c "$POSTFIX_DIR" set-permissions >/dev/null 2>&1 || true
    postfix -c "$POSTFIX_DIR" check >"$d/check.log" 2>&1 || return 1
    postfix -c "$POSTFIX_DIR" start >"$d/start.log" 2>&1 || return 1
    wait_port "${PORT[postfix]}"
}

# Count messages still in a server's queue (0 when drained).
queued_count() {
    case $1 in
        tambo) find "$WORK/tambo/data/queue" -maxdepth 1 -name '*.data' | wc -l ;;
        chasquid) find "$WORK/chasquid/data/queue" -maxdepth 1 -type f | wc -l ;;
        postfix) find "$WORK/postfix/queue/incoming" "$WORK/postfix/queue/active" \
            "$WORK/postfix/queue/deferred" -type f 2>/dev/null | wc -l ;;
    esac
}

drain() {
    for _ in $(seq 1 600); do
        [ "$(queued_count "$1")" = 0 ] && return 0
        sleep 0.1
    done
    echo "bench: $1's queue did not drain" >&2
}

declare -A RATE DONE_RATE
run_one() { # server concurrency
    local s=$1 c=$2 start end out done
    drain "$s"
    start=$(date +%s.%N)
    if ! out=$(smtp-source -s "$c" -m "$N" -l "$SIZE" -f bench@remote.test -t alice@example.com \
        "127.0.0.1:${PORT[$s]}" 2>&1); then
        echo "bench: smtp-source against $s failed: $out" >&2
        RATE[$s,$c]=0
        return
    fi
    end=$(date +%s.%N)
    if [ -n "$out" ]; then echo "   ($s: $out)" >&2; fi
    # Then until every message is delivered (the queue is empty again).
    drain "$s"
    done=$(date +%s.%N)
    RATE[$s,$c]=$(python3 -c "print(f'{$N/($end-$start):.0f}')")
    DONE_RATE[$s,$c]=$(python3 -c "print(f'{$N/($done-$start):.0f}')")
    printf "   %-9s c=%-3s %6s msg/s accepted, %6s msg/s accepted and delivered\n" \
        "$s" "$c" "${RATE[$s,$c]}" "${DONE_RATE[$s,$c]}"
}

ACTIVE=()
for s in $SERVERS; do
    echo "== starting $s"
    if "start_$s"; then
        ACTIVE+=("$s")
    else
        echo "   $s could not be started here; see $WORK/$s" >&2
    fi
done
# One warm-up run each (page cache, first connections).
for s in "${ACTIVE[@]}"; do
    N_SAVE=$N; N=200; run_one "$s" 8 >/dev/null; N=$N_SAVE
done

echo "== $N messages of $SIZE bytes per run, one local recipient, null delivery agent"
for c in $CONCURRENCY; do
    for s in "${ACTIVE[@]}"; do
        run_one "$s" "$c"
    done
done

# table NAME ARRAY: messages per second of each server and tambo's ratios.
table() {
    local -n rates=$2
    echo
    echo "$1"
    printf "%-12s" "concurrency"
    for s in "${ACTIVE[@]}"; do printf "%12s" "$s"; done
    for s in "${ACTIVE[@]}"; do [ "$s" = tambo ] || printf "%16s" "tambo/$s"; done
    echo
    for c in $CONCURRENCY; do
        printf "%-12s" "$c"
        for s in "${ACTIVE[@]}"; do printf "%12s" "${rates[$s,$c]}"; done
        for s in "${ACTIVE[@]}"; do
            [ "$s" = tambo ] && continue
            printf "%16s" "$(python3 -c "a,b=${rates[tambo,$c]:-0},${rates[$s,$c]:-0}; print(f'{a/b:.2f}x' if b else '-')")"
        done
        echo
    done
}
table "Accepted messages per second (N / time until smtp-source is done):" RATE
table "Accepted and delivered (N / time until the queue is empty again):" DONE_RATE

# CPU per accepted message of each tambo worker (user+system from /proc,
# over every message tambo accepted, warm-up included; "children" is the
# delivery agents deliverd ran and reaped).
if [[ " ${ACTIVE[*]} " == *" tambo "* ]]; then
    total=$((200 + N * $(wc -w <<<"$CONCURRENCY")))
    drain tambo
    echo
    echo "tambo CPU per accepted message ($total messages):"
    tck=$(getconf CLK_TCK)
    for name in smtpd queued deliverd authd; do
        for p in $(pgrep -P "$TAMBOD_PID" -x "tambo-$name"); do
            read -r u s cu cs < <(awk '{print $14, $15, $16, $17}' "/proc/$p/stat")
            python3 -c "print(f'   {\"$name\":9} {($u+$s)*1000/$tck/$total:.3f} ms  children {($cu+$cs)*1000/$tck/$total:.3f} ms')"
        done
    done
fi
