# Shared helpers for the scripts (sourced, not run).

# Where cargo puts build output: honours CARGO_TARGET_DIR and
# build.target-dir, as cargo itself resolves them.
target_dir() {
  cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# Stops the process whose pid is in PIDFILE with SIG, waits up to 30 s for it
# to exit (then SIGKILL), and removes the pid file.
stop_pidfile() {
  local sig="$1" pidfile="$2"
  [ -f "$pidfile" ] || return 0
  local pid; pid="$(cat "$pidfile")"
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }; sleep 0.25; done
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
