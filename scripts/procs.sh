# Sourced by scripts that start services: each runs in its own process group and every group is
# stopped when the script ends, on success, failure and Ctrl-C; waits have deadlines and say why
# they failed.
#   start LOG CMD...               run CMD in the background in a new process group; pid in $started
#   wait_until WHAT SECS PID LOG CMD...   run CMD until it succeeds; fail (with LOG) past SECS or
#                                  when PID exited
#   fail MESSAGE [LOG...]          print MESSAGE and the tail of each LOG, exit 1
#   stop_all                       stop every group (TERM, then KILL after 10 s)
# shellcheck shell=bash

groups=()
started=

start() {
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  started=$!
  groups+=("$started")
}

group_alive() { # PGID: whether a process of the group still runs (zombies do not count)
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

stop_all() {
  local g alive
  [ "${#groups[@]}" -gt 0 ] || return 0
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for g in "${groups[@]}"; do group_alive "$g" && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  wait 2>/dev/null || true
  groups=()
}

fail() {
  echo "${0##*/}: $1" >&2; shift
  local log
  for log in "$@"; do
    echo "--- $log:" >&2
    tail -n 40 "$log" >&2 || true
  done
  exit 1
}

wait_until() {
  local what=$1 secs=$2 pid=$3 log=$4; shift 4
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail "$what: the process exited" "$log"
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within $secs s" "$log"
    sleep 0.1
  done
}

procs_on_exit() {
  local status=$?
  trap - EXIT INT TERM
  stop_all
  exit "$status"
}
trap procs_on_exit EXIT
trap 'echo "${0##*/}: interrupted" >&2; exit 130' INT TERM
