# Shared helpers for the scripts (sourced, not run).

# Where cargo puts build output: honours CARGO_TARGET_DIR and
# build.target-dir, as cargo itself resolves them.
target_dir() {
  cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid in PIDFILE if it is still the process we started: a live process (not
# a thread of another; kill -0 answers for thread ids too) whose command line
# contains NEEDLE. Otherwise prints nothing and removes the stale file. Pid files
# outlive their processes (a machine restored from a disk snapshot keeps /tmp),
# and the number is soon reused: trusting it once SIGKILLed a broker thread.
live_pid() {
  local pidfile="$1" needle="$2" pid
  [ -f "$pidfile" ] || return 0
  pid="$(head -1 "$pidfile" 2>/dev/null | tr -dc 0-9)"
  if pid_is "$pid" "$needle"; then echo "$pid"; else rm -f "$pidfile"; fi
}

# True when PID is a live process (not a thread) whose command line contains NEEDLE.
pid_is() {
  local pid="$1" needle="$2" cmd
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  [ "$(awk '/^Tgid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" = "$pid" ] || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"$needle"* ]]
}

# Stops the process whose pid is in PIDFILE (if live_pid confirms it is ours,
# by NEEDLE) with SIG, waits up to 30 s for it to exit (then SIGKILL), and
# removes the pid file.
stop_pidfile() {
  local sig="$1" pidfile="$2" needle="$3" pid
  pid="$(live_pid "$pidfile" "$needle")"
  [ -n "$pid" ] || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do pid_is "$pid" "$needle" || { rm -f "$pidfile"; return 0; }; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true; rm -f "$pidfile"
}

# Writes a log4j2 configuration for a Kafka node to FILE: warnings to stdout,
# plus INFO from kafka.server.KafkaServer and any further LOGGER names.
write_broker_log4j() {
  local file="$1"; shift
  {
    cat <<'L4J'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        Pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaServer
        level: INFO
L4J
    local logger
    for logger in "$@"; do printf '      - name: %s\n        level: INFO\n' "$logger"; done
  } >"$file"
}
