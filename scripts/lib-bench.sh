# Shared by scripts/bench and scripts/soak (sourced, not run): the tools,
# the data, nsd and telesink on loopback. Expects root (the repository),
# SIZE, DATA, TS_PORT and UP_PORT; sets `bin`, `ts` (the telesink PID),
# `nsd_pid` and `ready` (seconds from start to serving the whole list).

need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v nsd >/dev/null || need+=(nsd)
command -v dig >/dev/null || need+=(bind9-dnsutils)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && { [ "${CI:-}" = true ] || [ "${INSTALL:-}" = 1 ]; }; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian starts nsd as a service on install; these scripts run their own.
    systemctl stop nsd >/dev/null 2>&1 || true
  else
    echo "missing: ${need[*]} (apt-get install ${need[*]}, or run as root with INSTALL=1)" >&2
    exit 1
  fi
fi

# BIN=path runs that binary instead (to compare two builds).
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --quiet
  bin=$root/target/release/telesink
fi
mkdir -p "$DATA"
if [ ! -s "$DATA/block.txt" ] || [ ! -s "$DATA/q-miss-3.txt" ] ||
  [ "$(wc -l <"$DATA/block.txt")" != "$SIZE" ]; then
  echo "generating data ($SIZE domains) in $DATA"
  python3 scripts/benchdata.py "$DATA" "$SIZE"
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

probe() { dig +short +time=1 +tries=1 @127.0.0.1 -p "$1" "$2" A 2>/dev/null | head -1; }
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$ts/status"; }
# CPU time telesink has used so far, in clock ticks (user + system).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$ts/stat"; }

start_nsd() {
  cat >"$DATA/nsd.conf" <<NSD
server:
    ip-address: 127.0.0.1@$UP_PORT
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$DATA"
    database: ""
    pidfile: "$DATA/nsd.pid"
    xfrdfile: "$DATA/xfrd.state"
    zonelistfile: "$DATA/zone.list"
    rrl-ratelimit: 0
zone:
    name: bench
    zonefile: bench.zone
NSD
  nsd -d -c "$DATA/nsd.conf" >"$DATA/nsd.log" 2>&1 &
  nsd_pid=$!
  pids+=("$nsd_pid")
  local deadline=$((SECONDS + 10))
  until [ -n "$(probe "$UP_PORT" host0.bench)" ]; do
    [ $SECONDS -lt $deadline ] || { echo "nsd did not start: $(cat "$DATA/nsd.log")" >&2; exit 1; }
    sleep 0.1
  done
}

# Starts telesink on the list and waits until its last entry is blocked.
start_telesink() {
  cat >"$DATA/telesink.toml" <<CONF
[server]
listen = ["127.0.0.1:$TS_PORT"]
[upstream]
servers = ["127.0.0.1:$UP_PORT"]
[cache]
capacity = 200000
[[blocking.lists]]
name = "bench"
path = "block.txt"
[http]
listen = "127.0.0.1:${HTTP_PORT:-5382}"
CONF
  local last start
  last=$(cat "$DATA/last.txt")
  start=$(date +%s.%N)
  TELESINK_LOG=${TELESINK_LOG:-warn} "$bin" run --config "$DATA/telesink.toml" &
  ts=$!
  pids+=("$ts")
  until [ "$(probe "$TS_PORT" "$last")" = "0.0.0.0" ]; do
    kill -0 "$ts" 2>/dev/null || { echo "telesink exited" >&2; exit 1; }
    sleep 0.02
  done
  ready=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
}
