# Shared helpers for the local-service scripts (slurm-up/down, postgres-up/down).
# Source it; it defines functions only.
#
# Daemons run in their foreground mode, detached with setsid, with their PID recorded in
# "$RUN_DIR/<name>.pid"; they are stopped by that PID and nothing else.

GM_SCRATCH="${GM_SCRATCH:-/tmp/gm-bench-services}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt_install PKG... : install the Debian packages that are missing (apt-get update only if needed).
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null 2>&1
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    }
}

# pid_alive NAME : true when the recorded PID of NAME is a live process named NAME (a PID file
# left in a reused scratch dir may name an unrelated process on a fresh machine).
pid_alive() {
    local f="$RUN_DIR/$1.pid" pid
    [ -s "$f" ] || return 1
    pid=$(cat "$f")
    kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

# start_daemon NAME CMD... : run CMD (foreground mode) detached with setsid; record its PID.
start_daemon() {
    local name=$1; shift
    if pid_alive "$name"; then log "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"; return 0; fi
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    setsid "$@" </dev/null >>"$LOG_DIR/$name.out" 2>&1 &
    echo $! >"$RUN_DIR/$name.pid"
    log "started $name (pid $!)"
}

# stop_daemon NAME [SIGNAL] : stop the recorded PID of NAME and wait up to 20 s for it to exit.
stop_daemon() {
    local name=$1 sig=${2:-TERM} f="$RUN_DIR/$1.pid" pid i
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if pid_alive "$name"; then
        kill "-$sig" "$pid" 2>/dev/null || true
        for i in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        if kill -0 "$pid" 2>/dev/null; then log "$name (pid $pid) ignored SIG$sig; sending KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$f"
}

# wait_for SECONDS DESCRIPTION CMD... : poll CMD every 0.5 s until it succeeds or time runs out.
wait_for() {
    local secs=$1 what=$2 i; shift 2
    for i in $(seq 1 $((secs * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    die "timed out after ${secs}s waiting for $what (logs in $LOG_DIR)"
}
