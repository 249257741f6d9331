#!/bin/sh
# The kernel-matrix scenario, run by /init inside each VM and natively on the host by
# `cargo xtask kernel-test`: start the agent, check that it loaded and attached every program,
# drive HTTP/1.x through busybox httpd (server) and busybox wget (client), check the agent's
# SERVER and CLIENT spans and that they link (the agent runs with --inject-traceparent, so
# sock_ops and sk_msg must load and insert the header too), stop it with SIGTERM and check it
# detached cleanly. With NGINX_BIN and CURL_BIN set it also drives TLS through nginx and curl (both on
# libssl: the uprobes must see the plaintext) and HTTP/2, in cleartext (h2c, prior knowledge)
# and over TLS (ALPN h2), and checks the spans of each.
# Prints `KT <key> <value>` lines for the host to parse and ends with `KT RESULT PASS` or
# `KT RESULT FAIL <why>`.
# Environment: TRACER (agent binary), BUSYBOX, PORT, WORK (scratch directory); for TLS and
# HTTP/2: NGINX_BIN, CURL_BIN (binaries; nginx itself reads NGINX), TLS_CERT, TLS_KEY (PEM files), TLS_PORT, H2C_PORT.
TRACER=${TRACER:-/bin/tracer}
BUSYBOX=${BUSYBOX:-/bin/busybox}
PORT=${PORT:-8080}
WORK=${WORK:-/tmp/kt}
TLS_PORT=${TLS_PORT:-8443}
H2C_PORT=${H2C_PORT:-8081}
EXPECTED_PROGRAMS=${EXPECTED_PROGRAMS:-28}

uptime_s() { cut -d' ' -f1 /proc/uptime; }
agent_pid=
httpd_pid=
nginx_pid=
finish() {
    [ -n "$httpd_pid" ] && kill "$httpd_pid" 2>/dev/null
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null
    [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null
    echo "KT ---- agent log ----"
    sed 's/^/KT-LOG /' "$WORK/agent.log" 2>/dev/null
    echo "KT ---- agent spans ----"
    sed 's/^/KT-SPAN /' "$WORK/spans" 2>/dev/null
    [ -f "$WORK/nginx/error.log" ] && sed 's/^/KT-NGINX /' "$WORK/nginx/error.log"
    echo "KT RESULT $1"
    exit 0
}
fail() { finish "FAIL $*"; }

rm -rf "$WORK" && mkdir -p "$WORK/www" || fail "cannot create $WORK"
echo "hello from the kernel matrix" > "$WORK/www/index.html"

start=$(uptime_s)
"$TRACER" --port "$PORT,$TLS_PORT,$H2C_PORT" --stats-interval 0 --inject-traceparent all >"$WORK/spans" 2>"$WORK/agent.log" &
agent_pid=$!
# Start-up under software emulation takes seconds (BTF parsing, verifying 35 programs).
i=0
until grep -q "tracing; stop with" "$WORK/agent.log" 2>/dev/null; do
    kill -0 "$agent_pid" 2>/dev/null || {
        agent_pid=
        fail "agent exited during start-up: $(grep ERROR "$WORK/agent.log" | tail -n1)"
    }
    i=$((i + 1))
    [ "$i" -gt 3000 ] && fail "agent not ready after 300 s"
    sleep 0.1
done
ready=$(uptime_s)
echo "KT START_SECONDS $(awk "BEGIN { printf \"%.1f\", $ready - $start }")"
attached=$(grep -o "programs=[0-9]*" "$WORK/agent.log" | head -n1 | cut -d= -f2)
echo "KT ATTACHED ${attached:-0}"
[ "${attached:-0}" = "$EXPECTED_PROGRAMS" ] || fail "attached ${attached:-0} programs, expected $EXPECTED_PROGRAMS"

"$BUSYBOX" httpd -f -p "127.0.0.1:$PORT" -h "$WORK/www" &
httpd_pid=$!
i=0
until "$BUSYBOX" wget -q -O "$WORK/body" "http://127.0.0.1:$PORT/index.html" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -gt 100 ] && fail "httpd does not answer on port $PORT"
    sleep 0.1
done
grep -q "hello from the kernel matrix" "$WORK/body" || fail "wrong body from httpd"
"$BUSYBOX" wget -q -O /dev/null "http://127.0.0.1:$PORT/missing/page" 2>/dev/null
# 200 and 404, each seen from both sides (the first request may have raced the listener: the
# checks below look at the last successful one and the 404).
expect() {
    i=0
    until grep -q "$1" "$WORK/spans"; do
        i=$((i + 1))
        [ "$i" -gt 300 ] && return 1
        sleep 0.1
    done
}
missing=
for want in "SERVER GET /index.html -> 200" "CLIENT GET /index.html -> 200" \
    "SERVER GET /missing/page -> 404" "CLIENT GET /missing/page -> 404"; do
    expect "$want" || missing="$missing [$want]"
done
spans=$(grep -c " -> " "$WORK/spans")
echo "KT SPANS $spans"
[ -z "$missing" ] || fail "spans missing:$missing"
echo "KT HTTP PASS"
# wget's CLIENT span is the parent of httpd's SERVER span (one trace).
client_span=$(grep "CLIENT GET /missing/page" "$WORK/spans" | head -n1 | sed 's/.* span=\([0-9a-f]*\).*/\1/')
grep "SERVER GET /missing/page" "$WORK/spans" | grep -q "parent=$client_span" ||
    fail "the SERVER span is not the CLIENT span's child"
echo "KT LINKED PASS"
grep -q "traceparent injection on" "$WORK/agent.log" || fail "injection did not attach"

# TLS and HTTP/2: nginx (started after the agent: found from its exec) serves HTTPS with ALPN
# h2 on TLS_PORT and h2c on H2C_PORT; curl asks for HTTP/1.1 and HTTP/2 over TLS and for h2c.
# Each request must be seen from both ends. Over TLS only the uprobes see the plaintext; on
# the h2c port only the HTTP/2 parser can make a span of the bytes.
if [ -n "$NGINX_BIN" ] && [ -n "$CURL_BIN" ]; then
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $WORK/nginx/client_body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$TLS_PORT ssl http2;
        ssl_certificate $TLS_CERT;
        ssl_certificate_key $TLS_KEY;
        location / { return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$H2C_PORT http2;
        location / { return 200 "ok\n"; }
    }
}
EOF
    "$NGINX_BIN" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" \
        -g "daemon off;" >/dev/null 2>&1 &
    nginx_pid=$!
    i=0
    until grep -q "attached TLS probes to .*libssl" "$WORK/agent.log"; do
        i=$((i + 1))
        [ "$i" -gt 300 ] && fail "no TLS probes attached to libssl 30 s after nginx started"
        sleep 0.1
    done
    echo "KT TLS_PROBES $(grep -c "attached TLS probes to" "$WORK/agent.log")"
    i=0
    until "$CURL_BIN" -sk -o /dev/null "https://127.0.0.1:$TLS_PORT/ready" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -gt 100 ] && fail "nginx does not answer on port $TLS_PORT"
        sleep 0.1
    done
    got=$("$CURL_BIN" -sk -o /dev/null -w '%{http_code} %{http_version}' --http1.1 "https://127.0.0.1:$TLS_PORT/tls/h1")
    [ "$got" = "200 1.1" ] || fail "curl over TLS (HTTP/1.1) got '$got'"
    got=$("$CURL_BIN" -sk -o /dev/null -w '%{http_code} %{http_version}' --http2 "https://127.0.0.1:$TLS_PORT/tls/h2")
    [ "$got" = "200 2" ] || fail "curl over TLS (HTTP/2) got '$got'"
    got=$("$CURL_BIN" -s -o /dev/null -w '%{http_code} %{http_version}' --http2-prior-knowledge "http://127.0.0.1:$H2C_PORT/h2c")
    [ "$got" = "200 2" ] || fail "curl h2c got '$got'"
    for want in "SERVER GET /tls/h1 -> 200" "CLIENT GET /tls/h1 -> 200"; do
        expect "$want" || missing="$missing [$want]"
    done
    [ -z "$missing" ] || fail "TLS spans missing:$missing"
    echo "KT TLS PASS"
    for want in "SERVER GET /tls/h2 -> 200" "CLIENT GET /tls/h2 -> 200" \
        "SERVER GET /h2c -> 200" "CLIENT GET /h2c -> 200"; do
        expect "$want" || missing="$missing [$want]"
    done
    [ -z "$missing" ] || fail "HTTP/2 spans missing:$missing"
    echo "KT HTTP2 PASS"
    kill "$nginx_pid"
    wait "$nginx_pid" 2>/dev/null
    nginx_pid=
fi

kill -TERM "$agent_pid"
i=0
while kill -0 "$agent_pid" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -gt 300 ] && fail "agent still running 30 s after SIGTERM"
    sleep 0.1
done
wait "$agent_pid"
status=$?
agent_pid=
[ "$status" = 0 ] || fail "agent exited with status $status after SIGTERM"
grep -q "detached all programs" "$WORK/agent.log" || fail "agent did not report detaching"
injected=$(grep "final counters" "$WORK/agent.log" | grep -o "inject_done=[0-9]*" | cut -d= -f2)
echo "KT INJECTED ${injected:-0}"
[ "${injected:-0}" -ge 1 ] || fail "no traceparent was injected"
finish PASS
