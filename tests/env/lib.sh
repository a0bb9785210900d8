# Shared shell library for tests/env: sourced by every component script, never run.
# Contract (see tests/env/README.md):
#   CRYPTOVIZ_CACHE  downloads and builds, reused between runs   (default ~/.cache/cryptoviz)
#   CRYPTOVIZ_STATE  one run's data, logs, pids and endpoints      (default $CRYPTOVIZ_CACHE/state/dev)
#   $CRYPTOVIZ_STATE/env.d/<component>.env   `export KEY=value` lines a started component publishes
#   $CRYPTOVIZ_STATE/env                     all of env.d concatenated (what tests source / read)
set -euo pipefail

ENV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$ENV_DIR/../.." && pwd)"
export CRYPTOVIZ_CACHE="${CRYPTOVIZ_CACHE:-$HOME/.cache/cryptoviz}"
export CRYPTOVIZ_STATE="${CRYPTOVIZ_STATE:-$CRYPTOVIZ_CACHE/state/dev}"
mkdir -p "$CRYPTOVIZ_CACHE" "$CRYPTOVIZ_STATE/env.d"

log() { printf '[env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[env] ERROR: %s\n' "$*" >&2; exit 1; }

# free_port: an unused TCP port on 127.0.0.1 (the kernel picks it).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# state_port NAME: the port recorded for NAME in this state dir, or a new free one (recorded).
# A component restarted inside one run keeps its port, so clients reconnect to the same address.
state_port() {
  local f="$CRYPTOVIZ_STATE/ports/$1"
  mkdir -p "$CRYPTOVIZ_STATE/ports"
  if [[ -s "$f" ]]; then cat "$f"; else free_port | tee "$f"; fi
}

# wait_until SECONDS DESCRIPTION CMD...: run CMD until it succeeds, or fail after SECONDS.
wait_until() {
  local deadline=$(( $(date +%s) + $1 )) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then die "timed out waiting for $what"; fi
    sleep 0.2
  done
}

# start_daemon NAME LOGFILE CMD...: start CMD in its own process group, record its pid.
start_daemon() {
  local name="$1" logf="$2"; shift 2
  mkdir -p "$CRYPTOVIZ_STATE/pids" "$(dirname "$logf")"
  setsid "$@" >>"$logf" 2>&1 < /dev/null &
  echo $! > "$CRYPTOVIZ_STATE/pids/$name"
  # Its start time, so a reused pid (after a reboot or a killed session) is never mistaken for ours.
  proc_start "$!" > "$CRYPTOVIZ_STATE/pids/$name.start"
}

# proc_start PID: the process's start time in clock ticks since boot (unchanged by exec).
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# pid_alive NAME: the recorded process is running, and is the process we started (same start time).
pid_alive() {
  local f="$CRYPTOVIZ_STATE/pids/$1" pid
  [[ -s "$f" ]] || return 1
  pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null || return 1
  [[ ! -s "$f.start" || "$(proc_start "$pid")" == "$(cat "$f.start")" ]]
}

# stop_daemon NAME [SIGNAL]: stop the process group, wait up to 30 s, then SIGKILL.
stop_daemon() {
  local name="$1" sig="${2:-TERM}" f="$CRYPTOVIZ_STATE/pids/$1" pid i
  [[ -s "$f" ]] || return 0
  # Never signal a process that merely inherited a recorded pid.
  pid_alive "$name" || { rm -f "$f" "$f.start"; return 0; }
  pid="$(cat "$f")"
  kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$f" "$f.start"
}

# publish COMPONENT KEY=VALUE...: write the component's endpoints, rebuild $CRYPTOVIZ_STATE/env.
publish() {
  local comp="$1"; shift
  : > "$CRYPTOVIZ_STATE/env.d/$comp.env"
  for kv in "$@"; do printf 'export %s\n' "$kv" >> "$CRYPTOVIZ_STATE/env.d/$comp.env"; done
  cat "$CRYPTOVIZ_STATE"/env.d/*.env > "$CRYPTOVIZ_STATE/env"
}

# need CMD HINT: fail with a clear message naming the missing piece.
need() { command -v "$1" >/dev/null 2>&1 || die "missing '$1': $2"; }

# apt_install PKG...: install Debian packages that are not installed yet (root, no prompts).
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  (( ${#missing[@]} == 0 )) && return 0
  log "apt-get install ${missing[*]}"
  if [[ ! -f "$CRYPTOVIZ_CACHE/.apt-updated" ]] || [[ -n "$(find "$CRYPTOVIZ_CACHE/.apt-updated" -mmin +720 2>/dev/null)" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
    touch "$CRYPTOVIZ_CACHE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}
