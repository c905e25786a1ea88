# Shell helpers shared by bench/run.sh and bench/drain.sh (sourced).

# wait_port PORT: wait (up to 15 s) until something listens on 127.0.0.1:PORT.
wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "bench: nothing listens on port $1" >&2
    return 1
}

# make_cert DIR: a self-signed certificate for "localhost" in DIR, laid out
# as chasquid's (and tambo's) certs/<name>/ directories want it.
make_cert() {
    mkdir -p "$1"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
        -keyout "$1/privkey.pem" -out "$1/fullchain.pem" 2>/dev/null
}

# stop_pids: SIGTERM every process in the caller's PIDS array, then
# SIGKILL whatever is left half a second later.
stop_pids() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
