#!/usr/bin/env bash
# Load comparison on loopback, all in one run so the ratios are fair:
#   1. wrk → nginx serving a 1 KiB object directly           (the upstream alone)
#   2. wrk → nginx proxy_pass → that nginx                      (the classic reverse-proxy baseline)
#   3. wrk → claimgate (bearer JWT → policy → SigV4 re-sign) → that nginx
# Needs nginx and wrk (Debian packages) and a release build: `cargo build --release`.
# Bounded: 3 runs of DURATION seconds against 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
BIN=${BIN:-target/release/claimgate}
command -v nginx >/dev/null && command -v wrk >/dev/null || { echo "install nginx and wrk: apt-get install -y nginx wrk"; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build --release"; exit 1; }
work=$(mktemp -d)
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -n "${dev_pid:-}" ] && kill -INT "$dev_pid" 2>/dev/null || true
  [ -n "${cg_pid:-}" ] && kill -INT "$cg_pid" 2>/dev/null || true
  sleep 1; rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www/datasets/imagenet"
head -c 1024 /dev/urandom > "$work/www/datasets/imagenet/0001.tar"
# nginx workers run unprivileged: they must be able to read the object
chmod 755 "$work"; chmod -R a+rX "$work/www"
cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:18081; keepalive 128; }
  server { listen 127.0.0.1:18081; root $work/www; }
  server {
    listen 127.0.0.1:18082;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
nginx -c "$work/nginx.conf"

# the dev IdP (and its token) from `claimgate dev`; its proxy is not used here
"$BIN" dev --port 0 --dir "$work/dev" > "$work/dev.out" 2>/dev/null &
dev_pid=$!
for _ in $(seq 1 100); do grep -q 'ready' "$work/dev.out" 2>/dev/null && break; sleep 0.1; done
issuer=$(cat "$work/dev/issuer")
cat > "$work/claimgate.toml" <<TOML
[server]
listen = "127.0.0.1:18083"
[[issuers]]
issuer = "$issuer"
audiences = ["claimgate"]
[policies]
dir = "$work/dev/policies"
[audit]
path = "$work/audit.log"
[[routes]]
name = "lake"
kind = "s3"
upstream = "http://127.0.0.1:18081"
region = "us-east-1"
credentials = { kind = "static", access_key_id = "AKIDBENCH", secret_access_key = "bench-secret" }
[[routes]]
name = "features"
kind = "http"
path_prefix = "/features/"
upstream = "http://127.0.0.1:18081"
credentials = { kind = "bearer", token = "t" }
TOML
CLAIMGATE_LOG=warn "$BIN" serve --config "$work/claimgate.toml" &
cg_pid=$!
sleep 1
token=$(cat "$work/dev/tokens/alice.jwt")
path=/datasets/imagenet/0001.tar
curl -fsS -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:18083$path" || { echo "claimgate did not serve the object"; exit 1; }

run() { wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$@" | awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} END {print rps, p50, p99}'; }
read -r direct d50 d99 < <(run "http://127.0.0.1:18081$path")
read -r nginx n50 n99 < <(run "http://127.0.0.1:18082$path")
# PROFILE=1: sample claimgate's CPU (software clock, no PMU needed) during its run
if [ -n "${PROFILE:-}" ]; then
  perf record -F 499 -e cpu-clock -g --call-graph dwarf,16384 -p "$cg_pid" -o "${PROFILE_OUT:-/tmp/claimgate.perf}" -- sleep $((DURATION - 1)) >/dev/null 2>&1 &
  perf_pid=$!
fi
# claimgate's own CPU time per request (user + system, from /proc), less noisy than req/s
# on a box where wrk, nginx and claimgate share the cores
ticks() { awk '{print $14 + $15}' "/proc/$cg_pid/stat"; }
t0=$(ticks); n0=$(wc -l < "$work/audit.log")
read -r cg c50 c99 < <(run -H "Authorization: Bearer $token" "http://127.0.0.1:18083$path")
t1=$(ticks); n1=$(wc -l < "$work/audit.log")
hz=$(getconf CLK_TCK)
cpu_us=$(echo "($t1 - $t0) * 1000000 / $hz / ($n1 - $n0)" | bc -l)
[ -n "${perf_pid:-}" ] && wait "$perf_pid"
printf '%-44s %10s %8s %8s %s\n' "path (1 KiB GET, $CONNS conns, ${DURATION}s)" "req/s" "p50" "p99" "vs nginx proxy_pass"
printf '%-44s %10.0f %8s %8s\n' "upstream directly" "$direct" "$d50" "$d99"
printf '%-44s %10.0f %8s %8s %s\n' "nginx proxy_pass" "$nginx" "$n50" "$n99" "1.00x"
printf '%-44s %10.0f %8s %8s %.2fx\n' "claimgate (JWT + policy + SigV4 + audit)" "$cg" "$c50" "$c99" "$(echo "$cg / $nginx" | bc -l)"
echo "audit records written: $(wc -l < "$work/audit.log")"
printf 'claimgate CPU per request: %.1f us (user + system, %d requests)\n' "$cpu_us" "$((n1 - n0))"
