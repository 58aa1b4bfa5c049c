# Shell pieces shared by the scripts that start a stack (scripts/stack, scripts/e2e, scripts/bench,
# bench/compare, scripts/pg-temp, scripts/setup): one NATS configuration, one process starter,
# one wait loop, one readiness check. Sourced from the repository root:
#   . scripts/lib.sh
# Set LIB_TAG (e.g. "stack") for the prefix of messages. Processes started with `start_bg` are
# recorded in STARTED_PIDS and stopped by `stop_started` (call it from an EXIT trap).

LIB_TAG=${LIB_TAG:-chat}
STARTED_PIDS=()
declare -A SERVICE_PID=()

lib_say() { echo "[$LIB_TAG] $*" >&2; }
lib_die() { lib_say "$*"; exit 1; }

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# True when dotted version $1 is at least $2 (2.20.0 ≥ 2.11: a numeric comparison, not a pattern).
version_at_least() { [ -n "$1" ] && printf '%s\n%s\n' "$2" "$1" | sort -V -C; }

# wait_until TRIES CMD...: runs CMD every 0.1 s until it succeeds; false after TRIES attempts.
wait_until() {
  local tries=$1 i; shift
  for ((i = 0; i < tries; i++)); do "$@" && return 0; sleep 0.1; done
  return 1
}
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -sf -o /dev/null --max-time 2 "$1"; }

# start_bg LOG CMD...: starts CMD in the background with its output in LOG; its pid is recorded
# (STARTED_PIDS) and left in LAST_PID.
start_bg() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  LAST_PID=$!
  STARTED_PIDS+=("$LAST_PID")
}

# Stops (SIGTERM) everything start_bg started and waits for it to exit.
stop_started() {
  local p
  for p in "${STARTED_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${STARTED_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  STARTED_PIDS=()
}

# nats_config FILE PORT STORE_DIR [SYNC] [HTTP_PORT]: the one nats-server configuration of every
# stack (JetStream in STORE_DIR; SYNC=always fsyncs every acknowledged write, default lazy, NATS's
# default; HTTP_PORT adds the monitoring endpoint).
nats_config() {
  local file=$1 port=$2 store=$3 sync=${4:-lazy} http=${5:-}
  {
    echo "listen: 127.0.0.1:$port"
    [ -z "$http" ] || echo "http: 127.0.0.1:$http"
    echo "jetstream {"
    echo "  store_dir: \"$store\""
    [ "$sync" != always ] || echo "  sync_interval: always"
    echo "}"
  } >"$file"
}

# start_nats DIR PORT [SYNC] [HTTP_PORT]: nats-server (.venv) with its configuration, store and log
# (nats.log) in DIR; returns once it accepts connections, or fails naming its log. NATS_PID is its
# pid. START_PREFIX (an array, e.g. taskset -c 0) runs before the command when set.
start_nats() {
  local dir=$1 port=$2
  nats_config "$dir/nats.conf" "$port" "$dir/js" "${3:-lazy}" "${4:-}"
  start_bg "$dir/nats.log" ${START_PREFIX[@]+"${START_PREFIX[@]}"} .venv/bin/nats-server -c "$dir/nats.conf"
  NATS_PID=$LAST_PID
  wait_until 100 tcp_open "$port" || {
    tail -n 20 "$dir/nats.log" >&2
    lib_die "nats-server never listened on 127.0.0.1:$port (log: $dir/nats.log)"
  }
}

# start_service NAME BIN_DIR LOG ADMIN_PORT [VAR=value ...]: starts service NAME from BIN_DIR with
# the variables given and its admin server on ADMIN_PORT (for wait_ready). Its pid is LAST_PID.
start_service() {
  local name=$1 bin=$2 log=$3 admin=$4; shift 4
  [ -x "$bin/$name" ] || lib_die "$bin/$name is missing: build it first"
  start_bg "$log" env ADMIN_LISTEN="127.0.0.1:$admin" "$@" ${START_PREFIX[@]+"${START_PREFIX[@]}"} "$bin/$name"
  SERVICE_PID[$name]=$LAST_PID
}

# wait_ready NAME ADMIN_PORT LOG [SECONDS]: waits until the service's /readyz answers 200; if it
# never does (default 60 s) or its process (started by start_service) exited, fails naming the
# service and its log.
wait_ready() {
  local name=$1 admin=$2 log=$3 secs=${4:-60} i pid=${SERVICE_PID[$1]:-}
  for ((i = 0; i < secs * 10; i++)); do
    http_ok "http://127.0.0.1:$admin/readyz" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2
      lib_die "$name exited before it was ready; its log: $log"
    fi
    sleep 0.1
  done
  tail -n 20 "$log" >&2
  lib_die "$name never became ready in ${secs} s (http://127.0.0.1:$admin/readyz); its log: $log"
}
