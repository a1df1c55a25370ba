#!/usr/bin/env bash
# cluster/local.sh up|down|status -- a local Ray head + MLflow tracking server, both on 127.0.0.1.
#
#   cluster/local.sh up       # start both, wait until they answer, print the export lines
#   cluster/local.sh up --nodes 2 --s3   # + a worker node (its own raylet, resources, temp dir) and an
#                             # S3 endpoint (moto server) that holds MLflow's artifacts
#   source runs/cluster/env.sh   # RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, MLFLOW_TRACKING_URI
#   ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m pipeline.train ...
#   cluster/local.sh add-node # one more worker node (e.g. to replace one that was lost)
#   cluster/local.sh status
#   cluster/local.sh down     # stops only the processes `up` started (recorded PIDs), never other Rays
#
# Settings (environment):
#   POSTER_RAY_PORT=6379          GCS port of the head
#   POSTER_DASHBOARD_PORT=8265    dashboard + job-submission API (RAY_ADDRESS for `ray job submit`)
#   POSTER_RAY_CLIENT_PORT=10001  Ray Client server (ray://127.0.0.1:PORT)
#   POSTER_MLFLOW_PORT=5000       MLflow tracking server
#   POSTER_NUM_CPUS=2             logical CPUs of the head; POSTER_NUM_GPUS (unset = autodetect)
#   POSTER_OBJECT_STORE_MB        object store size (unset = Ray's default, ~30 % of free RAM)
#   POSTER_CLUSTER_DIR=runs/cluster   state, logs, MLflow DB + artifacts, auth token
#   POSTER_RAY_TEMP_DIR=/tmp/poster-ray-<RAY_PORT>   Ray's session dir; kept apart from /tmp/ray so a
#                                 plain ray.init() elsewhere never attaches to this head by accident
#   POSTER_START_TIMEOUT=120      seconds to wait for each service to answer
#   POSTER_STOP_TIMEOUT=30        seconds between SIGTERM and SIGKILL on `down`
#   POSTER_NODE_CPUS=1            logical CPUs of each worker node (up --nodes N: N-1 worker nodes)
#   POSTER_S3_PORT=9000           S3 endpoint (up --s3: moto_server on 127.0.0.1)
#   POSTER_S3_BUCKET=poster       bucket created by up --s3; MLflow artifacts go to s3://BUCKET/mlartifacts
#   S3 keys: $POSTER_CLUSTER_DIR/s3_credentials (AWS ini format, mode 600; generated when missing). They
#   reach the Ray nodes and MLflow in their environment (AWS_ACCESS_KEY_ID/...), never on a command line;
#   env.sh points clients at the file (AWS_SHARED_CREDENTIALS_FILE) with AWS_ENDPOINT_URL and AWS_REGION.
# Numbers must be plain decimal integers: they are checked before any arithmetic (bash arithmetic
# would evaluate an expression such as a[$(cmd)]). Token auth is always on.
#
# Security: the token reaches curl on stdin (`--config -`), never on a command line (`ps` shows
# those); the state file is parsed line by line against a strict pattern, never sourced.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST=127.0.0.1
RAY_PORT="${POSTER_RAY_PORT:-6379}"
DASHBOARD_PORT="${POSTER_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${POSTER_RAY_CLIENT_PORT:-10001}"
MLFLOW_PORT="${POSTER_MLFLOW_PORT:-5000}"
NUM_CPUS="${POSTER_NUM_CPUS:-2}"
NUM_GPUS="${POSTER_NUM_GPUS:-}"
OBJECT_STORE_MB="${POSTER_OBJECT_STORE_MB:-}"
TIMEOUT="${POSTER_START_TIMEOUT:-120}"
STOP_TIMEOUT="${POSTER_STOP_TIMEOUT:-30}"
NODE_CPUS="${POSTER_NODE_CPUS:-1}"
S3_PORT="${POSTER_S3_PORT:-9000}"
S3_BUCKET="${POSTER_S3_BUCKET:-poster}"
NODES=1 WITH_S3=0
STATE_DIR="${POSTER_CLUSTER_DIR:-$REPO/runs/cluster}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"            # absolute: the sqlite URI and token path need it
RAY_TMP="${POSTER_RAY_TEMP_DIR:-/tmp/poster-ray-$RAY_PORT}"   # short: Ray's unix sockets cap paths at 107 chars
STATE="$STATE_DIR/state.env"
TOKEN_FILE="$STATE_DIR/auth_token"
SAFE_PATH='^[A-Za-z0-9_./+-]+$'   # what a path may look like in the state file and env.sh

# The repo's virtual environment when present, else whatever is on PATH. It also goes first on
# the head's PATH: job entrypoints say `python -m ...` and must find the interpreter that has ray.
if [[ -x "$REPO/.venv/bin/ray" ]]; then BIN="$REPO/.venv/bin/"; export PATH="$REPO/.venv/bin:$PATH"; else BIN=""; fi
RAY="${BIN}ray"
MLFLOW="${BIN}mlflow"
MOTO="${BIN}moto_server"
PYTHON="${BIN}python"

die() { echo "local.sh: $*" >&2; exit 1; }

# check_int NAME VALUE [MIN MAX]: a plain decimal integer in range, tested as text before any
# arithmetic sees it.
check_int() {
  local name="$1" value="$2" min="${3:-0}" max="${4:-1000000000}"
  [[ "$value" =~ ^[0-9]{1,10}$ ]] || die "$name must be a whole number, got '$value'"
  value=$((10#$value))
  (( value >= min && value <= max )) || die "$name must be in $min..$max, got $value"
}
check_settings() {
  check_int POSTER_RAY_PORT "$RAY_PORT" 1 65535
  check_int POSTER_DASHBOARD_PORT "$DASHBOARD_PORT" 1 65535
  check_int POSTER_RAY_CLIENT_PORT "$CLIENT_PORT" 1 65535
  check_int POSTER_MLFLOW_PORT "$MLFLOW_PORT" 1 65535
  check_int POSTER_NUM_CPUS "$NUM_CPUS" 1 4096
  [[ -z "$NUM_GPUS" ]] || check_int POSTER_NUM_GPUS "$NUM_GPUS" 0 1024
  [[ -z "$OBJECT_STORE_MB" ]] || check_int POSTER_OBJECT_STORE_MB "$OBJECT_STORE_MB" 64 16777216
  check_int POSTER_START_TIMEOUT "$TIMEOUT" 1 86400
  check_int POSTER_STOP_TIMEOUT "$STOP_TIMEOUT" 0 86400
  check_int POSTER_NODE_CPUS "$NODE_CPUS" 1 4096
  check_int POSTER_S3_PORT "$S3_PORT" 1 65535
  [[ "$S3_BUCKET" =~ ^[a-z0-9][a-z0-9.-]{2,62}$ ]] || die "POSTER_S3_BUCKET must be a valid bucket name (3-63 of a-z 0-9 . -)"
  [[ "$RAY_TMP" =~ $SAFE_PATH ]] || die "POSTER_RAY_TEMP_DIR may hold only letters, digits and _ . / + -"
  [[ "$STATE_DIR" =~ $SAFE_PATH ]] || die "POSTER_CLUSTER_DIR may hold only letters, digits and _ . / + -"
  if [[ -n "${POSTER_RAY_AUTH:-}" && "${POSTER_RAY_AUTH}" != token ]]; then
    die "POSTER_RAY_AUTH=${POSTER_RAY_AUTH}: token auth is always on (unset POSTER_RAY_AUTH)"
  fi
}

# load_state: read state.env as data. Known keys only, values of the expected shape, no expansion;
# anything else stops the script before a value is used.
STATE_KEYS=(RAY_PID MLFLOW_PID RAY_PORT DASHBOARD_PORT CLIENT_PORT MLFLOW_PORT RAY_TMP)
OPTIONAL_KEYS=(NODE_PIDS S3_PID S3_PORT)   # up --nodes / --s3 only
NODE_PIDS="" S3_PID=""
load_state() {
  local line key value n=0 seen=" "
  while IFS= read -r line || [[ -n "$line" ]]; do
    n=$((n + 1))
    [[ "$line" =~ ^([A-Z][A-Z0-9_]*)=([A-Za-z0-9_./+-]*)$ ]] || die "$STATE:$n: not a KEY=value line; refusing to use it"
    key="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}"
    [[ " ${STATE_KEYS[*]} ${OPTIONAL_KEYS[*]} " == *" $key "* ]] || die "$STATE:$n: unknown key $key"
    case "$key" in
      RAY_TMP) [[ "$value" =~ $SAFE_PATH ]] || die "$STATE:$n: bad path" ;;
      NODE_PIDS) [[ "$value" =~ ^([0-9]{1,9}(\+[0-9]{1,9})*)?$ ]] || die "$STATE:$n: NODE_PIDS must be PIDs joined by +" ;;
      *) check_int "$STATE:$n $key" "$value" 1 4194304 ;;
    esac
    printf -v "$key" '%s' "$value"
    seen+="$key "
  done < "$STATE"
  for key in "${STATE_KEYS[@]}"; do
    [[ "$seen" == *" $key "* ]] || die "$STATE: no $key"
  done
}
alive() {  # running, and not a zombie waiting to be reaped
  # One ps call decides: a zombie reaped between two probes (kill -0, then ps) printed nothing and
  # read as alive, and `down` then failed with "still running" on a process already gone.
  local state
  [[ "${1:-}" =~ ^[0-9]+$ ]] && state="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ -n "$state" && "$state" != Z* ]]
}
started() { ps -o lstart= -p "$1" 2>/dev/null | tr -s ' '; }  # with the PID, identifies a process
port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# All descendants of the given PIDs, plus every process in their sessions (setsid below makes each
# leader its own session). Job drivers start in a new session of their own, so the parent walk is
# what finds them.
tree_pids() {
  local roots="$*"
  ps -eo pid=,ppid=,sid= | awk -v roots="$roots" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) { keep[r[i]] = 1; sess[r[i]] = 1 } }
    { pid[NR] = $1; ppid[NR] = $2; sid[NR] = $3 }
    END {
      for (i = 1; i <= NR; i++) if (sid[i] in sess) keep[pid[i]] = 1
      do { changed = 0
           for (i = 1; i <= NR; i++) if ((ppid[i] in keep) && !(pid[i] in keep)) { keep[pid[i]] = 1; changed = 1 }
      } while (changed)
      for (p in keep) print p
    }' | sort -n | while read -r p; do alive "$p" && echo "$p"; done
}

record_pids() {  # PID<TAB>start time of every process under the given leaders, for `down`
  local p
  # written aside, then renamed: a `down` running meanwhile (say while `add-node` starts a node)
  # must read the whole old list or the whole new one, never a half-written file
  for p in $(tree_pids "$@"); do printf '%s\t%s\n' "$p" "$(started "$p")"; done > "$STATE_DIR/pids.new"
  mv -f "$STATE_DIR/pids.new" "$STATE_DIR/pids"
}

recorded_alive() {  # recorded PIDs whose start time still matches: a PID reused since is someone else's
  local pid start
  [[ -f "$STATE_DIR/pids" ]] || return 0
  while IFS=$'\t' read -r pid start; do
    [[ "$pid" =~ ^[0-9]{1,9}$ ]] || continue   # not a PID line: nothing of ours
    if alive "$pid" && [[ "$(started "$pid")" == "$start" ]]; then echo "$pid"; fi
  done < "$STATE_DIR/pids"
}

curl_ray() {  # GET a dashboard path with the bearer token; curl reads the header from stdin
  # (printf is a builtin and tr gets no arguments: the token is on no command line)
  { printf 'header = "Authorization: Bearer '; tr -d '\n"\\' < "$TOKEN_FILE"; printf '"\n'; } |
    curl -fsS --max-time 5 --config - "http://$HOST:$DASHBOARD_PORT$1"
}

ray_ready() {  # the node registered (`ray start` printed its success line) and the jobs API answers;
  # the dashboard alone can answer while the raylet is still starting, and then fail its start
  grep -q "Ray runtime started" "$STATE_DIR/ray.log" 2>/dev/null && curl_ray /api/jobs/
}

wait_for() {  # wait_for NAME PID CHECK-COMMAND...
  local name="$1" pid="$2"; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    alive "$pid" || { echo "local.sh: $name exited during start; log tail:" >&2; tail -n 30 "$STATE_DIR/$name.log" >&2; return 1; }
    (( SECONDS - t0 > TIMEOUT )) && { echo "local.sh: $name did not answer within ${TIMEOUT}s" >&2; return 1; }
    sleep 1
  done
  echo "  $name answered after $((SECONDS - t0))s"
}

write_env() {
  {
    echo "# source $STATE_DIR/env.sh   -- written by cluster/local.sh up"
    echo "export RAY_ADDRESS=http://$HOST:$DASHBOARD_PORT"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
    echo "export MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT"
    if ((WITH_S3)); then  # the keys stay in the file: env.sh holds no secret
      echo "export AWS_ENDPOINT_URL=http://$HOST:$S3_PORT"
      echo "export AWS_REGION=us-east-1"
      echo "export AWS_SHARED_CREDENTIALS_FILE=$S3_CREDS"
      echo "export POSTER_S3_BUCKET=$S3_BUCKET"
    fi
  } > "$STATE_DIR/env.sh"
}

stop_pids() {  # SIGTERM all at once, wait, SIGKILL what is left, wait for it to be gone
  local pids=("$@") t0=$SECONDS left=() p
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  while :; do
    left=(); for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
    ((${#left[@]})) || return 0
    (( SECONDS - t0 >= STOP_TIMEOUT )) && break
    sleep 0.5
  done
  echo "local.sh: SIGKILL to ${left[*]} (still up after ${STOP_TIMEOUT}s)" >&2
  kill -KILL "${left[@]}" 2>/dev/null || true
  t0=$SECONDS
  while (( SECONDS - t0 < 10 )); do
    left=(); for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
    ((${#left[@]})) || return 0
    sleep 0.5
  done
  return 0  # the caller reports what survived
}

S3_CREDS="$STATE_DIR/s3_credentials"

s3_keys() {  # export the keys from the credentials file into this shell's environment (no argv)
  if [[ ! -s "$S3_CREDS" ]]; then
    (umask 077; printf '[default]\naws_access_key_id = poster-%s\naws_secret_access_key = %s\n' \
      "$(od -An -tx1 -N6 /dev/urandom | tr -d ' \n')" "$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')" > "$S3_CREDS")
  fi
  local line
  while IFS= read -r line; do
    [[ "$line" =~ ^aws_access_key_id\ *=\ *([A-Za-z0-9/+=_-]+)$ ]] && export AWS_ACCESS_KEY_ID="${BASH_REMATCH[1]}"
    [[ "$line" =~ ^aws_secret_access_key\ *=\ *([A-Za-z0-9/+=_-]+)$ ]] && export AWS_SECRET_ACCESS_KEY="${BASH_REMATCH[1]}"
  done < "$S3_CREDS"
  [[ -n "${AWS_ACCESS_KEY_ID:-}" && -n "${AWS_SECRET_ACCESS_KEY:-}" ]] || die "$S3_CREDS: no [default] keys"
  export AWS_ENDPOINT_URL="http://$HOST:$S3_PORT" AWS_REGION=us-east-1 MLFLOW_S3_ENDPOINT_URL="http://$HOST:$S3_PORT"
  unset AWS_SHARED_CREDENTIALS_FILE AWS_PROFILE AWS_SESSION_TOKEN
}

start_s3() {  # moto's S3 server on loopback
  command -v "$MOTO" >/dev/null || die "moto_server not found (pip install 'moto[server]')"
  echo "Starting S3 endpoint (moto, http://$HOST:$S3_PORT, bucket $S3_BUCKET) ..."
  setsid "$MOTO" -H "$HOST" -p "$S3_PORT" > "$STATE_DIR/s3.log" 2>&1 < /dev/null &
  S3_PID=$!
}

s3_ready() {  # answers, and the bucket exists (created with the keys from the environment)
  "$PYTHON" - "$S3_BUCKET" <<'PY'
import sys, boto3
s3 = boto3.client("s3")
name = sys.argv[1]
if name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket=name)
PY
}

start_node() {  # worker node $1: a `ray start --address` of its own (raylet + object store)
  local i="$1" node_tmp="$RAY_TMP-node$1"
  echo "Starting worker node $i ($NODE_CPUS CPUs, temp dir $node_tmp) ..."
  setsid "$RAY" start --block --address "$HOST:$RAY_PORT" --node-ip-address "$HOST" --num-cpus "$NODE_CPUS" \
    --dashboard-agent-listen-port 0 --temp-dir "$node_tmp" --disable-usage-stats \
    --resources '{"poster_node": 1}' > "$STATE_DIR/node$i.log" 2>&1 < /dev/null &
  NODE_PIDS+="${NODE_PIDS:+ }$!"
}

alive_nodes() {  # nodes alive in the GCS (the head counts)
  curl_ray '/nodes?view=summary' 2>/dev/null | "$PYTHON" -c '
import json, sys
d = json.load(sys.stdin)["data"]["summary"]
print(sum(1 for n in d if n["raylet"]["state"] == "ALIVE"))'
}

nodes_ready() { [[ "$(alive_nodes 2>/dev/null)" == "$NODES" ]]; }

node_env() {  # the environment every Ray node of ours starts in
  # Inherited client settings must not leak into the head's processes.
  unset RAY_ADDRESS RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
  export RAY_USAGE_STATS_ENABLED=0
  # On SIGTERM `ray start --block` first drains the node (for Serve upgrades on Kubernetes), up to
  # 30 s, and after a Train job it waits all of them out. A dev head has nothing to hand over.
  export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
}

# add-node: one more worker node on a running cluster, e.g. the replacement of a node that was
# lost (a spot reclaim rehearsed by killing its processes). It joins as `up --nodes` ones do:
# same resources, token and S3 keys, a temp dir of its own; `down` stops it with the rest.
cmd_add_node() {
  [[ -f "$STATE" ]] || die "not up (no $STATE); run 'cluster/local.sh up' first"
  load_state
  alive "$RAY_PID" || die "the head (pid $RAY_PID) is not running; run 'cluster/local.sh down', then 'up'"
  node_env
  if [[ -n "$S3_PID" ]]; then s3_keys; fi  # the node's workers read and write the bucket
  local n=1 p
  for p in ${NODE_PIDS//+/ }; do n=$((n + 1)); done  # a fresh index: a lost node's temp dir stays
  NODE_PIDS="${NODE_PIDS//+/ }"
  start_node "$n"
  { grep -v '^NODE_PIDS=' "$STATE"; echo "NODE_PIDS=${NODE_PIDS// /+}"; } > "$STATE.new" && mv "$STATE.new" "$STATE"
  record_pids "$RAY_PID" "$MLFLOW_PID" $S3_PID $NODE_PIDS
  # `ray start` prints this once its raylet has registered with the head (a count of alive nodes
  # would race with the GCS marking a lost node dead, which takes its health-check timeout)
  wait_for "node$n" "${NODE_PIDS##* }" grep -q "Ray runtime started" "$STATE_DIR/node$n.log" ||
    die "worker node $n did not join; log: $STATE_DIR/node$n.log"
  record_pids "$RAY_PID" "$MLFLOW_PID" $S3_PID $NODE_PIDS
  echo "Worker node $n up (pid ${NODE_PIDS##* })."
}

cmd_up() {
  while (($#)); do
    case "$1" in
      --nodes) [[ $# -ge 2 ]] || die "--nodes needs a number"; check_int --nodes "$2" 1 16; NODES=$((10#$2)); shift 2 ;;
      --s3) WITH_S3=1; shift ;;
      *) die "up: unknown option $1 (use --nodes N, --s3)" ;;
    esac
  done
  if [[ -f "$STATE" ]]; then
    load_state
    if [[ -n "$(recorded_alive)" ]]; then
      die "already up (state in $STATE); run 'cluster/local.sh down' first"
    fi
    rm -f "$STATE" "$STATE_DIR/pids"  # left by a head that died on its own
  fi
  local ports=("$RAY_PORT" "$DASHBOARD_PORT" "$CLIENT_PORT" "$MLFLOW_PORT")
  ((WITH_S3)) && ports+=("$S3_PORT")
  for p in "${ports[@]}"; do
    port_busy "$p" && die "port $p on $HOST is in use; pick others with POSTER_*_PORT"
  done
  command -v "$RAY" >/dev/null || die "ray not found (make venv, or put ray on PATH)"
  command -v "$MLFLOW" >/dev/null || die "mlflow not found (make venv, or put mlflow on PATH)"

  if [[ ! -s "$TOKEN_FILE" ]]; then
    # A project-scoped token; ~/.ray/auth_token (Ray's default) is left alone.
    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$TOKEN_FILE")
  fi

  node_env
  local artifacts="$STATE_DIR/mlartifacts"
  if ((WITH_S3)); then
    s3_keys  # every process started below (Ray nodes, MLflow) reads the keys from its environment
    start_s3
    wait_for s3 "$S3_PID" s3_ready || { kill -TERM "$S3_PID" 2>/dev/null; die "S3 endpoint did not start"; }
    artifacts="s3://$S3_BUCKET/mlartifacts"
  fi

  local ray_args=(start --head --block --node-ip-address "$HOST" --port "$RAY_PORT"
    --num-cpus "$NUM_CPUS" --include-dashboard true --dashboard-host "$HOST"
    --dashboard-port "$DASHBOARD_PORT" --ray-client-server-port "$CLIENT_PORT"
    --dashboard-agent-listen-port 0 --temp-dir "$RAY_TMP" --disable-usage-stats
    --resources '{"poster_node": 1}')  # one per node: scaling.worker_resources={poster_node: 1} spreads by it
  [[ -n "$NUM_GPUS" ]] && ray_args+=(--num-gpus "$NUM_GPUS")
  [[ -n "$OBJECT_STORE_MB" ]] && ray_args+=(--object-store-memory "$((OBJECT_STORE_MB * 1024 * 1024))")

  local t0=$SECONDS
  echo "Starting Ray head (GCS $HOST:$RAY_PORT, dashboard $HOST:$DASHBOARD_PORT, token auth, $NUM_CPUS CPUs) ..."
  # setsid: the head gets a session of its own, so `down` can find everything it spawned by id.
  setsid "$RAY" "${ray_args[@]}" > "$STATE_DIR/ray.log" 2>&1 < /dev/null &
  local ray_pid=$!

  echo "Starting MLflow server (http://$HOST:$MLFLOW_PORT, sqlite $STATE_DIR/mlflow.db, artifacts $artifacts) ..."
  mkdir -p "$STATE_DIR/mlartifacts"
  # MLflow's background job runner (huey consumers, ~7 processes) serves GenAI features this
  # project does not use; off by default to keep the 2-core box free. Set it to true to keep it.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
  setsid "$MLFLOW" server --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STATE_DIR/mlflow.db" \
    --artifacts-destination "$artifacts" > "$STATE_DIR/mlflow.log" 2>&1 < /dev/null &
  local mlflow_pid=$!

  cat > "$STATE" <<EOF
RAY_PID=$ray_pid
MLFLOW_PID=$mlflow_pid
RAY_PORT=$RAY_PORT
DASHBOARD_PORT=$DASHBOARD_PORT
CLIENT_PORT=$CLIENT_PORT
MLFLOW_PORT=$MLFLOW_PORT
RAY_TMP=$RAY_TMP
EOF
  if ((WITH_S3)); then printf 'S3_PID=%s\nS3_PORT=%s\n' "$S3_PID" "$S3_PORT" >> "$STATE"; fi

  record_pids "$ray_pid" "$mlflow_pid" $S3_PID  # already now, so that a failed start can be cleaned up
  local ok=1
  wait_for ray "$ray_pid" ray_ready || ok=0
  if ((ok && NODES > 1)); then
    local i
    for ((i = 1; i < NODES; i++)); do start_node "$i"; done
    echo "NODE_PIDS=${NODE_PIDS// /+}" >> "$STATE"
    record_pids "$ray_pid" "$mlflow_pid" $S3_PID $NODE_PIDS
    wait_for ray "$ray_pid" nodes_ready || ok=0
  fi
  if ((ok)); then wait_for mlflow "$mlflow_pid" curl -fsS --max-time 5 "http://$HOST:$MLFLOW_PORT/health" || ok=0; fi
  if ((!ok)); then
    echo "local.sh: start failed; stopping what was started" >&2
    cmd_down >&2 || true
    exit 1
  fi
  record_pids "$ray_pid" "$mlflow_pid" $S3_PID $NODE_PIDS  # now with everything they started
  write_env
  echo "Up in $((SECONDS - t0))s ($(wc -l < "$STATE_DIR/pids") processes, PIDs in $STATE_DIR/pids)."
  cmd_info
}

cmd_info() {
  cat <<EOF

  Ray GCS         $HOST:$RAY_PORT        (ray.init / ray start --address on this machine)
  Ray dashboard   http://$HOST:$DASHBOARD_PORT   (job submission; token auth)
  Ray Client      ray://$HOST:$CLIENT_PORT
  MLflow          http://$HOST:$MLFLOW_PORT   (DB $STATE_DIR/mlflow.db, artifacts $STATE_DIR/mlartifacts)

Client settings (or: source $STATE_DIR/env.sh):
$(sed -n 's/^export/  export/p' "$STATE_DIR/env.sh")

Submit a job from the repo root:
  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
      python -m pipeline.train --config configs/smoke.yaml tracking.uri=\$MLFLOW_TRACKING_URI
EOF
}

cmd_down() {
  [[ -f "$STATE" ]] || { echo "not up (no $STATE)"; return 0; }
  load_state
  # Ours = the recorded processes still alive, plus whatever our live leaders have spawned since
  # `up` (Ray workers, job drivers).
  local ours=() p
  mapfile -t ours < <(recorded_alive)
  local leaders=() nodes=()
  for p in ${NODE_PIDS//+/ }; do
    [[ " ${ours[*]} " == *" $p "* ]] && nodes+=("$p")
  done
  for p in "$RAY_PID" "$MLFLOW_PID" $S3_PID ${NODE_PIDS//+/ }; do
    [[ " ${ours[*]} " == *" $p "* ]] && leaders+=("$p")
  done
  local pids=()
  for p in $(printf '%s\n' "${ours[@]}" $( ((${#leaders[@]})) && tree_pids "${leaders[@]}") | sort -un); do
    alive "$p" && pids+=("$p")
  done
  if ((${#pids[@]})); then
    # The leaders first: `ray start --block` stops its own processes in order (raylet, GCS, ...);
    # then whatever is left, e.g. job drivers, which run in sessions of their own.
    echo "Stopping Ray head (pid $RAY_PID) and MLflow (pid $MLFLOW_PID): ${#pids[@]} processes ..."
    ((${#nodes[@]})) && stop_pids "${nodes[@]}"  # worker nodes before the head they report to
    ((${#leaders[@]})) && stop_pids "${leaders[@]}"
    local rest=()
    for p in "${pids[@]}"; do alive "$p" && rest+=("$p"); done
    stop_pids "${rest[@]}"
  fi
  local left=()
  for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
  ((${#left[@]})) && die "still running: ${left[*]}"
  rm -f "$STATE" "$STATE_DIR/pids"
  echo "Down. Kept: $STATE_DIR/mlflow.db, $STATE_DIR/mlartifacts, logs in $STATE_DIR and $RAY_TMP."
}

cmd_status() {
  [[ -f "$STATE" ]] || { echo "not up (no $STATE)"; return 3; }
  load_state
  local rc=0
  if alive "$RAY_PID" && curl_ray /api/version >/dev/null 2>&1; then
    echo "ray     up    pid $RAY_PID  http://$HOST:$DASHBOARD_PORT  ($(tree_pids "$RAY_PID" | wc -l) processes)"
  else
    echo "ray     DOWN  pid $RAY_PID"; rc=1
  fi
  if alive "$MLFLOW_PID" && curl -fsS --max-time 5 "http://$HOST:$MLFLOW_PORT/health" >/dev/null 2>&1; then
    echo "mlflow  up    pid $MLFLOW_PID  http://$HOST:$MLFLOW_PORT"
  else
    echo "mlflow  DOWN  pid $MLFLOW_PID"; rc=1
  fi
  [[ $rc == 0 ]] && echo "client settings: source $STATE_DIR/env.sh"
  return $rc
}

check_settings
case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  add-node) cmd_add_node ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|add-node|down|status   (settings: see the head of this file)" >&2; exit 2 ;;
esac
