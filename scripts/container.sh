#!/usr/bin/env bash
# The container image, built and run for real with podman (no Docker engine and
# no image registry needed). Idempotent; every step measures and prints its time.
#   scripts/container.sh engine       install podman/buildah/debootstrap from Debian, check it runs
#   scripts/container.sh base-images  local stand-ins for the images the Dockerfile names
#                                     (rust:1-bookworm, debian:bookworm-slim), made with
#                                     debootstrap; rootfs tarballs cached under $CACHE/images
#   scripts/container.sh build        podman build of the real Dockerfile (cargo registry and
#                                     target kept in BuildKit-style cache mounts); size + time
#   scripts/container.sh smoke        run the image beside the native Kafka (127.0.0.1:9092) and
#                                     Postgres (127.0.0.1:5432): non-root, mounted config and
#                                     password file, HEALTHCHECK, exact consumption, SIGTERM
#   scripts/container.sh compose      docker-compose.yml with podman-compose and local stand-ins
#                                     for apache/kafka, postgres and prometheus: two replicas,
#                                     SIGKILL of one, table exact, Prometheus scraping both
#   scripts/container.sh all          everything above, in order
# If the engine cannot run containers the script fails and says why.
# Env: KAFKA_PG_SINK_CACHE (~/.cache/kafka-pg-sink), DEBIAN_MIRROR (http://deb.debian.org/debian),
#      KAFKA_PG_SINK_IMAGE (localhost/kafka-pg-sink:dev), CONTAINER_STATE_DIR
#      (/tmp/kafka-pg-sink-container), DATABASE_URL, KAFKA_BROKERS, SMOKE_EVENTS, COMPOSE_EVENTS
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${KAFKA_PG_SINK_CACHE:-$HOME/.cache/kafka-pg-sink}"
IMAGES="$CACHE/images"
STATE="${CONTAINER_STATE_DIR:-/tmp/kafka-pg-sink-container}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IMAGE="${KAFKA_PG_SINK_IMAGE:-localhost/kafka-pg-sink:dev}"
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
ADMIN_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"

# Names the Dockerfile and docker-compose.yml use, fully qualified as podman stores them.
RUST_IMAGE=docker.io/library/rust:1-bookworm
SLIM_IMAGE=docker.io/library/debian:bookworm-slim
TRIXIE_IMAGE=docker.io/library/debian:trixie-slim
KAFKA_IMAGE="docker.io/apache/kafka:$KAFKA_VERSION"
PG_IMAGE=docker.io/library/postgres:17
STANDIN_LABEL=org.kafka-pg-sink.standin

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

log() { echo "[container] $*" >&2; }
die() { echo "[container] FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
human() { numfmt --to=si --suffix=B "$1"; }

apt_install() {
  log "installing $* from Debian"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Without systemd, podman 4.3 logs "unable to get systemd connection to add
# healthchecks" for every container that has a HEALTHCHECK: it cannot schedule
# them. Harmless here (health checks are run explicitly), so filtered.
podman() { command podman "$@" 2> >(grep -v 'systemd connection' >&2); }

# ---------------------------------------------------------------- engine
# Debian's podman runs rootful containers on these machines once two defaults
# are changed, in a containers.conf of our own (CONTAINERS_CONF):
#  - default_ulimits = []: the default nofile/nproc ulimits fail with
#    "error setting rlimit type 7: operation not permitted";
#  - runc instead of crun when cgroups are hybrid (v1 controllers plus a
#    cgroup2 mount that holds a controller): crun refuses with "cgroups in
#    hybrid mode not supported, drop all controllers from cgroupv2".
engine() {
  local missing=()
  for c in podman buildah debootstrap runc zstd; do command -v "$c" >/dev/null || missing+=("$c"); done
  if [ ${#missing[@]} -gt 0 ]; then
    local t0; t0="$(now)"
    apt_install podman buildah debootstrap runc zstd crun netavark aardvark-dns fuse-overlayfs \
      containernetworking-plugins iptables ca-certificates
    log "engine packages installed in $(since "$t0") s"
  fi
  mkdir -p "$STATE"
  local runtime=""
  if grep -qs . /sys/fs/cgroup/unified/cgroup.controllers; then
    runtime='runtime = "runc"'
    log "hybrid cgroups with cgroup2 controllers ($(tr '\n' ' ' </sys/fs/cgroup/unified/cgroup.controllers)): using runc"
  fi
  cat >"$STATE/containers.conf" <<CONF
[containers]
default_ulimits = []
[engine]
$runtime
CONF
  export CONTAINERS_CONF="$STATE/containers.conf"
  podman info >"$STATE/podman-info.txt" 2>&1 || { cat "$STATE/podman-info.txt" >&2; die "podman does not start here (podman info failed)"; }
}

# Runs a throwaway container; any failure is the engine's, said loudly.
engine_check() {
  local out
  if ! out="$(podman run --rm --pull=never "$SLIM_IMAGE" sh -c 'echo ok' 2>&1)" || [ "$out" != ok ]; then
    die "the container engine cannot run containers on this machine: $out"
  fi
}

# ---------------------------------------------------------------- base images
# A Debian root filesystem from debootstrap, trimmed like the official -slim
# images (no docs, man pages, locales, apt lists), as a zstd tarball.
make_slim_rootfs() {
  local suite="$1" out="$2"
  local root="$STATE/rootfs-$suite"
  local t0; t0="$(now)"
  log "debootstrap $suite (minbase) from $MIRROR"
  $SUDO rm -rf "$root"; mkdir -p "$root" "$CACHE/debootstrap-debs"
  $SUDO debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap-debs" "$suite" "$root" "$MIRROR" \
    >"$STATE/debootstrap-$suite.log" 2>&1 || { tail -30 "$STATE/debootstrap-$suite.log" >&2; die "debootstrap $suite"; }
  log "debootstrap $suite took $(since "$t0") s"
  $SUDO tee "$root/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  $SUDO tee "$root/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::AutoRemove::SuggestsImportant "false";
EOF
  # Services never start inside an image build (postgresql-common would).
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$root/usr/sbin/policy-rc.d" >/dev/null
  $SUDO chmod 755 "$root/usr/sbin/policy-rc.d"
  local updates="$suite-updates" security="$suite-security"
  $SUDO rm -f "$root/etc/apt/sources.list"
  $SUDO tee "$root/etc/apt/sources.list.d/debian.sources" >/dev/null <<EOF
Types: deb
URIs: $MIRROR
Suites: $suite $updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  $SUDO find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  $SUDO find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  $SUDO rm -rf "$root"/usr/share/{man,groff,info,lintian,linda}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log \
    "$root"/var/log/apt/* "$root/etc/machine-id" "$root/etc/hostname"
  $SUDO find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  $SUDO tar --numeric-owner -C "$root" -c . | zstd -q -T0 -3 >"$out.tmp"
  mv "$out.tmp" "$out"; $SUDO rm -rf "$root"
  log "$(basename "$out"): $(human "$(stat -c %s "$out")")"
}

# podman import of a cached tarball unless the image already came from it.
import_image() {
  local tarball="$1" name="$2"; shift 2
  local stamp; stamp="$(basename "$tarball"):$(stat -c %s:%Y "$tarball")"
  if [ "$(podman image inspect --format "{{ index .Config.Labels \"$STANDIN_LABEL\" }}" "$name" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  local t0; t0="$(now)"
  zstd -q -d -c "$tarball" | podman import --quiet \
    --change "LABEL $STANDIN_LABEL=$stamp" \
    --change 'LABEL org.opencontainers.image.description="local stand-in made by scripts/container.sh, not the registry image"'  \
    "$@" - "$name" >/dev/null
  log "imported $name in $(since "$t0") s"
}

slim_image() {
  local suite="$1" name="$2" tarball="$IMAGES/debian-$1-slim.tar.zst"
  mkdir -p "$IMAGES"
  [ -f "$tarball" ] || make_slim_rootfs "$suite" "$tarball"
  import_image "$tarball" "$name" --change 'CMD ["bash"]'
}

# rust:1-bookworm as the official image lays it out: buildpack-deps-like tools
# plus a rustup toolchain in /usr/local/rustup and /usr/local/cargo on PATH. The
# toolchain is the host's (no network to static.rust-lang.org here).
rust_image() {
  command -v rustc >/dev/null || die "a host Rust toolchain (rustup) is needed to make $RUST_IMAGE"
  local sysroot version host tc tarball
  sysroot="$(rustc --print sysroot)"
  version="$(rustc --version | awk '{print $2}')"
  host="$(rustc -vV | sed -n 's/^host: //p')"
  tc="$version-$host"
  # CAs added locally (a TLS-inspecting proxy in front of crates.io, as on
  # these machines) go into the build image too, or cargo cannot fetch.
  local cas=/usr/local/share/ca-certificates cahash=none
  if compgen -G "$cas/*.crt" >/dev/null; then cahash="$(cat "$cas"/*.crt | sha256sum | cut -c1-8)"; fi
  tarball="$IMAGES/rust-$version-bookworm-ca-$cahash.tar.zst"
  if [ ! -f "$tarball" ]; then
    local t0; t0="$(now)"
    local rustup; rustup="$(command -v rustup || true)"
    [ -n "$rustup" ] && rustup="$(readlink -f "$rustup")"
    log "making $RUST_IMAGE with rustc $version from $sysroot"
    local camount=(); [ "$cahash" != none ] && camount=(-v "$cas:/mnt/cas:ro")
    podman rm -f kpgs-mkrust >/dev/null 2>&1 || true
    podman run --name kpgs-mkrust --pull=never -v "$sysroot:/mnt/toolchain:ro" \
      ${rustup:+-v "$rustup:/mnt/rustup:ro"} "${camount[@]}" -e TC="$tc" "$SLIM_IMAGE" bash -euc '
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
          build-essential ca-certificates curl git pkg-config libssl-dev >/dev/null
        rm -rf /var/lib/apt/lists/*
        if ls /mnt/cas/*.crt >/dev/null 2>&1; then
          cp /mnt/cas/*.crt /usr/local/share/ca-certificates/ && update-ca-certificates >/dev/null 2>&1
        fi
        mkdir -p /usr/local/rustup/toolchains/$TC /usr/local/cargo/bin
        cd /mnt/toolchain
        cp -a bin lib libexec etc /usr/local/rustup/toolchains/$TC/ 2>/dev/null || cp -a bin lib /usr/local/rustup/toolchains/$TC/
        mkdir -p /usr/local/rustup/toolchains/$TC/share
        printf "version = \"12\"\ndefault_toolchain = \"%s\"\nprofile = \"minimal\"\nauto_self_update = \"disable\"\n" "$TC" \
          >/usr/local/rustup/settings.toml
        if [ -x /mnt/rustup ]; then
          cp /mnt/rustup /usr/local/cargo/bin/rustup
          for t in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
            ln -sf rustup /usr/local/cargo/bin/$t; done
        else
          for t in /usr/local/rustup/toolchains/$TC/bin/*; do ln -sf "$t" /usr/local/cargo/bin/; done
        fi
        chmod -R a+w /usr/local/rustup /usr/local/cargo
        PATH=/usr/local/cargo/bin:$PATH RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
          cargo --version' >"$STATE/mkrust.log" 2>&1 \
      || { tail -30 "$STATE/mkrust.log" >&2; podman rm -f kpgs-mkrust >/dev/null 2>&1; die "making $RUST_IMAGE"; }
    podman export kpgs-mkrust | zstd -q -T0 -3 >"$tarball.tmp"
    podman rm -f kpgs-mkrust >/dev/null
    mv "$tarball.tmp" "$tarball"
    log "$(basename "$tarball"): $(human "$(stat -c %s "$tarball")"), made in $(since "$t0") s ($(tail -1 "$STATE/mkrust.log"))"
  fi
  import_image "$tarball" "$RUST_IMAGE" \
    --change "ENV RUSTUP_HOME=/usr/local/rustup" --change "ENV CARGO_HOME=/usr/local/cargo" \
    --change "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV RUST_VERSION=$version" --change 'CMD ["bash"]'
}

base_images() {
  local t0; t0="$(now)"
  engine
  slim_image bookworm "$SLIM_IMAGE"
  engine_check
  rust_image
  log "base images ready in $(since "$t0") s: $SLIM_IMAGE, $RUST_IMAGE"
}

# ---------------------------------------------------------------- build
# The cargo registry and target directory live in cache mounts (Dockerfile
# `RUN --mount=type=cache`); buildah keeps them under $TMPDIR/buildah-cache*,
# pointed into $CACHE so CI can keep them with the rest of the cache.
build() {
  base_images
  mkdir -p "$CACHE/buildah-tmp"
  local t0; t0="$(now)"
  log "podman build of Dockerfile -> $IMAGE (nice 10)"
  TMPDIR="$CACHE/buildah-tmp" nice -n 10 podman build --pull=never --format docker --layers -t "$IMAGE" -f Dockerfile . \
    >"$STATE/build.log" 2>&1 || { tail -60 "$STATE/build.log" >&2; die "podman build (log: $STATE/build.log)"; }
  local secs; secs="$(since "$t0")"
  local size; size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
  log "built $IMAGE in $secs s; image size $(human "$size") ($size bytes)"
  echo "build_seconds=$secs image_bytes=$size" >"$STATE/build.result"
}

# ---------------------------------------------------------------- shared helpers
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# N distinct orders as "key<TAB>json" lines: a third re-sent identical, a
# third re-sent with a new sent_at (excluded from the hash), every tenth
# updated to version 2. Rows expected: N; with version 2: ceil(N/10).
gen_events() {
  awk -v n="$1" 'function ev(i, v, s) {
      return sprintf("ord-%06d\t{\"order_id\":\"ord-%06d\",\"version\":%d,\"customer\":\"c%d\",\"amount\":%d.%02d,\"status\":\"%s\",\"sent_at\":\"2026-11-25T10:%02d:%02dZ\"}",
        i, i, v, i % 97, (i * 31) % 500, i % 100, v == 1 ? "created" : "paid", s % 60, (s * 7) % 60) }
    BEGIN { for (i = 0; i < n; i++) {
      print ev(i, 1, 0)
      if (i % 3 == 0) print ev(i, 1, 0)
      if (i % 3 == 1) print ev(i, 1, 1)
      if (i % 10 == 0) print ev(i, 2, 2) } }'
}

kafka_lib() { scripts/kafka.sh lib; }
# The jar set has slf4j-api 1.7 beside log4j's slf4j2 binding: the tools print
# an SLF4J "no binder" notice on every start, dropped here.
kjava() { nice -n 5 java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$(kafka_lib)/*" "$@" 2> >(grep -v '^SLF4J' >&2); }

# "partition:offset ..." sorted, from GetOffsetShell lines "topic:partition:offset".
end_offsets() { awk -F: '{print $(NF-1)":"$NF}' | sort -n | tr '\n' ' ' | sed 's/ $//'; }

wait_http_200() {  # url timeout_s -> 0 when 200
  local url="$1" deadline=$((SECONDS + $2))
  while [ $SECONDS -lt "$deadline" ]; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ] && return 0
    sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------- smoke
# The image beside the native services (host network): its own database, role
# (with a password) and topic; config and password come from mounted files.
smoke() {
  engine
  podman image exists "$IMAGE" || build
  engine_check
  scripts/postgres.sh ensure
  scripts/kafka.sh ensure
  local t_all; t_all="$(now)"
  local n="${SMOKE_EVENTS:-3000}"
  local id; id="$(date +%s)-$$"
  local sid="${id//-/_}"
  local db="kpgs_smoke_$sid" role="kpgs_smoke_$sid" topic="kpgs-smoke-$id" group="kpgs-smoke-$id"
  local name="kpgs-smoke-$id" port; port="$(free_port)"
  local work="$STATE/smoke-$id"; mkdir -p "$work"
  local pw; pw="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  SMOKE_CLEANUP=(); trap smoke_cleanup EXIT
  log "smoke: database $db, role $role, topic $topic, group $group, http 127.0.0.1:$port"

  psql "$ADMIN_URL" -Xq -v ON_ERROR_STOP=1 -c "CREATE ROLE $role LOGIN PASSWORD '$pw'" \
    -c "CREATE DATABASE $db OWNER $role"
  SMOKE_CLEANUP+=("psql '$ADMIN_URL' -Xq -c 'DROP DATABASE IF EXISTS $db WITH (FORCE)' -c 'DROP ROLE IF EXISTS $role'")
  local db_url="postgres://postgres@127.0.0.1:5432/$db"
  kjava org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --create --topic "$topic" \
    --partitions 4 --replication-factor 1 >/dev/null
  SMOKE_CLEANUP+=("kjava org.apache.kafka.tools.TopicCommand --bootstrap-server '$BROKERS' --delete --topic '$topic' >/dev/null 2>&1")
  gen_events "$n" >"$work/events.tsv"
  local total; total="$(wc -l <"$work/events.tsv")"
  kjava org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BROKERS" --topic "$topic" \
    --reader-property parse.key=true --reader-property key.separator=$'\t' <"$work/events.tsv"
  log "produced $total messages ($n distinct keys, with duplicates and updates)"

  cat >"$work/config.toml" <<TOML
# Mounted over the image's /etc/kafka-pg-sink/config.toml by the smoke test.
[kafka]
brokers = "$BROKERS"
group_id = "$group"
auto_offset_reset = "earliest"

[postgres]
url = "postgres://$role@127.0.0.1:5432/$db"
max_connections = 4

[http]
bind = "127.0.0.1:$port"

[sink]
shutdown_timeout = "30s"

[[route]]
topic = "$topic"
table = "public.orders"
key = "/order_id"
hash_exclude = ["/sent_at"]
version = "/version"
TOML
  chmod 644 "$work/config.toml"
  printf '%s\n' "$pw" >"$work/pg_password"
  podman secret create "$name-pw" "$work/pg_password" >/dev/null
  SMOKE_CLEANUP+=("podman secret rm '$name-pw' >/dev/null 2>&1")
  local run_args=(--network host --pull=never --cap-drop ALL --security-opt no-new-privileges
    -v "$work/config.toml:/etc/kafka-pg-sink/config.toml:ro"
    --secret "$name-pw,type=mount,target=pg_password,uid=10001,gid=10001,mode=0400"
    -e KAFKA_PG_SINK__POSTGRES__PASSWORD_FILE=/run/secrets/pg_password)

  local t0; t0="$(now)"
  SMOKE_CLEANUP+=("podman rm -f '$name' >/dev/null 2>&1")
  podman run -d --name "$name" "${run_args[@]}" "$IMAGE" >/dev/null
  if ! wait_http_200 "http://127.0.0.1:$port/readyz" 60; then
    podman logs --tail 40 "$name" >&2 || true
    die "smoke: /readyz did not answer 200 within 60 s"
  fi
  local cold; cold="$(since "$t0")"
  log "cold start (podman run -> /readyz 200): $cold s"

  # Non-root: inside the container and as seen by the host kernel.
  local uid_in host_pid uid_host
  uid_in="$(podman exec "$name" id)"
  host_pid="$(podman inspect --format '{{.State.Pid}}' "$name")"
  uid_host="$(ps -o uid= -p "$host_pid" | tr -d ' ')"
  [[ "$uid_in" == "uid=10001(sink) gid=10001(sink)"* ]] || die "smoke: runs as $uid_in"
  [ "$uid_host" = 10001 ] || die "smoke: PID $host_pid has uid $uid_host"
  log "non-root: $uid_in; PID 1 of the container is host pid $host_pid, uid $uid_host"

  local hc; hc="$(podman healthcheck run "$name" 2>&1)" || die "smoke: HEALTHCHECK failed: $hc"
  log "HEALTHCHECK: ${hc:-healthy} (status $(podman inspect --format '{{.State.Healthcheck.Status}}' "$name"))"

  # Exactly once: stored offsets reach the end offsets, rows = distinct keys.
  smoke_exact "$db_url" "$topic" "$group" "$total" "$n" "$name"

  # SIGTERM (podman stop -t 30) while a second round of the same events (all
  # duplicates) is being consumed: exit 0 within the grace period; a restart
  # resumes from the stored offsets and the table stays exact.
  local events2="$work/events2.tsv"
  cat "$work/events.tsv" "$work/events.tsv" "$work/events.tsv" >"$events2"
  local total2=$((total + $(wc -l <"$events2")))
  # Streamed in chunks so that the consumer is busy when SIGTERM arrives.
  split -l 1000 "$events2" "$work/chunk."
  ( for f in "$work"/chunk.*; do cat "$f"; sleep 0.1; done ) \
    | kjava org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BROKERS" --topic "$topic" \
        --reader-property parse.key=true --reader-property key.separator=$'\t' &
  local producer=$!
  local stored=0 deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ] && [ "$stored" -le "$total" ]; do
    stored="$(psql "$db_url" -XAtqc "SELECT coalesce(sum(next_offset),0) FROM sink_offsets WHERE topic = '$topic' AND consumer_group = '$group'")"
    sleep 0.05
  done
  t0="$(now)"
  podman stop -t 30 "$name" >/dev/null
  local stop_s code; stop_s="$(since "$t0")"
  code="$(podman inspect --format '{{.State.ExitCode}}' "$name")"
  local at_stop; at_stop="$(psql "$db_url" -XAtqc "SELECT coalesce(sum(next_offset),0) FROM sink_offsets WHERE topic = '$topic' AND consumer_group = '$group'")"
  podman logs "$name" >"$work/sink.log" 2>&1 || true
  grep -q 'shutdown requested' "$work/sink.log" || die "smoke: no graceful shutdown in the log"
  [ "$code" = 0 ] || { tail -20 "$work/sink.log" >&2; die "smoke: exit code $code after SIGTERM"; }
  awk -v s="$stop_s" 'BEGIN { exit !(s < 30) }' || die "smoke: stop took $stop_s s (grace 30 s)"
  local when="during consumption"; [ "$stored" -lt "$total2" ] || when="after consumption (the stream was faster)"
  log "SIGTERM $when (stored $stored of $total2 when sent, $at_stop after): exited 0 in $stop_s s (grace 30 s)"
  wait "$producer"
  podman start "$name" >/dev/null
  wait_http_200 "http://127.0.0.1:$port/readyz" 60 || die "smoke: not ready after restart"
  smoke_exact "$db_url" "$topic" "$group" "$total2" "$n" "$name"
  t0="$(now)"
  podman stop -t 30 "$name" >/dev/null
  local idle_stop; idle_stop="$(since "$t0")"
  [ "$(podman inspect --format '{{.State.ExitCode}}' "$name")" = 0 ] || die "smoke: exit code after the second SIGTERM"
  log "restart resumed exactly; idle SIGTERM exit 0 in $idle_stop s"

  password_proof "$work" "$name" "${run_args[@]}"
  smoke_features "$work" "$name" "$group" "$db" "${run_args[@]}"

  smoke_cleanup; SMOKE_CLEANUP=(); trap - EXIT
  local size; size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
  log "smoke OK in $(since "$t_all") s: image $(human "$size"), cold start $cold s, SIGTERM exit $stop_s s"
  echo "smoke_seconds=$(since "$t_all") cold_start_seconds=$cold sigterm_exit_seconds=$stop_s image_bytes=$size" >"$STATE/smoke.result"
}

smoke_exact() {  # db_url topic group total_messages distinct_keys container
  local db_url="$1" topic="$2" group="$3" total="$4" n="$5" name="$6"
  local stored="" deadline=$((SECONDS + 180))
  while [ $SECONDS -lt $deadline ]; do
    stored="$(psql "$db_url" -XAtqc "SELECT coalesce(sum(next_offset),0) FROM sink_offsets WHERE topic = '$topic' AND consumer_group = '$group'" 2>/dev/null || echo 0)"
    [ "$stored" = "$total" ] && break
    sleep 0.2
  done
  [ "$stored" = "$total" ] || { podman logs --tail 40 "$name" >&2; die "smoke: stored offsets $stored of $total"; }
  local ends stored_parts rows v2 dead
  ends="$(kjava org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$BROKERS" --topic "$topic" | end_offsets)"
  stored_parts="$(psql "$db_url" -XAtqc "SELECT partition || ':' || next_offset FROM sink_offsets WHERE topic = '$topic' AND consumer_group = '$group' ORDER BY partition" | tr '\n' ' ' | sed 's/ $//')"
  rows="$(psql "$db_url" -XAtqc "SELECT count(*) FROM orders")"
  v2="$(psql "$db_url" -XAtqc "SELECT count(*) FROM orders WHERE payload->>'version' = '2'")"
  dead="$(psql "$db_url" -XAtqc "SELECT count(*) FROM sink_dead_letters")"
  log "end offsets [$ends], stored [$stored_parts]; rows $rows (distinct keys $n), version 2: $v2, dead letters $dead"
  [ "$ends" = "$stored_parts" ] || die "smoke: stored offsets differ from end offsets"
  if [ "$rows" != "$n" ] || [ "$v2" != "$(( (n + 9) / 10 ))" ] || [ "$dead" != 0 ]; then die "smoke: table not exact"; fi
}

# What the slim runtime stage must keep working, in the image: SASL (SCRAM)
# to Kafka, TLS (rustls) to Postgres, and librdkafka's OpenSSL for SSL.
smoke_features() {
  local work="$1" name="$2" group="$3" db="$4"; shift 4
  local args=("$@") a port; port="$(free_port)"
  local sasl="${SASL_BROKERS:-127.0.0.1:9094}"
  if ! (exec 3<>"/dev/tcp/${sasl%:*}/${sasl##*:}") 2>/dev/null; then
    log "features: no SASL listener at $sasl; SASL check skipped"; return
  fi
  sed -e "s#^brokers = .*#brokers = \"$sasl\"#" -e "s#^group_id = .*#group_id = \"$group-sasl\"#" \
      -e "s#^url = \"\(.*\)\"#url = \"\1?sslmode=require\"#" -e "s#^bind = .*#bind = \"127.0.0.1:$port\"#" \
      "$work/config.toml" >"$work/features.toml"
  cat >>"$work/features.toml" <<'TOML'

[kafka.properties]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanism" = "SCRAM-SHA-256"
"sasl.username" = "kpgs"
TOML
  chmod 644 "$work/features.toml"
  local fargs=()
  for a in "${args[@]}"; do fargs+=("${a//$work\/config.toml/$work/features.toml}"); done
  podman run -d --name "$name-features" "${fargs[@]}" -e KAFKA_PG_SINK_KAFKA_PROPERTY__SASL_PASSWORD=kpgs-secret \
    "$IMAGE" >/dev/null
  SMOKE_CLEANUP+=("podman rm -f '$name-features' >/dev/null 2>&1")
  wait_http_200 "http://127.0.0.1:$port/readyz" 60 \
    || { podman logs --tail 30 "$name-features" >&2; die "features: not ready with SASL/SCRAM + sslmode=require"; }
  local ssl
  ssl="$(psql "$ADMIN_URL" -XAtqc "SELECT string_agg(DISTINCT s.ssl::text || ' ' || s.version, ',') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '$db' AND a.application_name = 'kafka-pg-sink'")"
  podman stop -t 30 "$name-features" >/dev/null
  [[ "$ssl" == "true "* ]] || die "features: Postgres connections are not TLS ($ssl)"
  log "features: consumer joined over SASL_PLAINTEXT/SCRAM-SHA-256 ($sasl); Postgres connections TLS: $ssl (rustls, sslmode=require)"

  # SSL to a plaintext listener: the client must get as far as the handshake.
  port="$(free_port)"
  sed -e "s#^bind = .*#bind = \"127.0.0.1:$port\"#" -e "s#^group_id = .*#group_id = \"$group-ssl\"#" \
    "$work/config.toml" >"$work/ssl.toml"
  printf '\n[kafka.properties]\n"security.protocol" = "SSL"\n' >>"$work/ssl.toml"
  chmod 644 "$work/ssl.toml"
  fargs=()
  for a in "${args[@]}"; do fargs+=("${a//$work\/config.toml/$work/ssl.toml}"); done
  podman run -d --name "$name-ssl" "${fargs[@]}" -e KAFKA_PG_SINK_LOG=info,librdkafka=info,rdkafka=info "$IMAGE" >/dev/null
  SMOKE_CLEANUP+=("podman rm -f '$name-ssl' >/dev/null 2>&1")
  local logs="" deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ]; do
    logs="$(podman logs "$name-ssl" 2>&1)"
    grep -qi 'SSL handshake failed\|ssl.*handshake' <<<"$logs" && break
    sleep 0.5
  done
  podman stop -t 30 "$name-ssl" >/dev/null
  grep -qi 'SSL handshake failed\|ssl.*handshake' <<<"$logs" \
    || { tail -20 <<<"$logs" >&2; die "features: librdkafka SSL did not reach a handshake"; }
  log "features: librdkafka SSL client initialised (system OpenSSL, CA store) and attempted a handshake: $(grep -oi 'SSL handshake failed[^"]*' <<<"$logs" | head -1 | cut -c1-100)"
}

smoke_cleanup() {
  local rc=$?
  if [ "${KEEP:-0}" = 1 ]; then log "KEEP=1: leaving smoke resources"; return $rc; fi
  local i
  for ((i = ${#SMOKE_CLEANUP[@]} - 1; i >= 0; i--)); do eval "${SMOKE_CLEANUP[$i]}" || true; done
  return $rc
}

# The main cluster trusts loopback, so a password is never asked there. Proof
# that the mounted secret file is what authenticates: a scratch cluster with
# scram-sha-256 (other port, own directory) accepts the file's password and
# refuses a wrong one.
password_proof() {
  local work="$1" name="$2"; shift 2
  local args=("$@")
  local pgbin; pgbin="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin | sort -V | tail -1)"
  local dir="$work/pg-scram" pgport; pgport="$(free_port)"
  local as_pg=(runuser -u postgres --); [ "$(id -u)" = 0 ] || as_pg=(sudo -u postgres)
  mkdir -p "$dir"; chown postgres: "$dir" 2>/dev/null || $SUDO chown postgres: "$dir"
  "${as_pg[@]}" "$pgbin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $pgport -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
  SMOKE_CLEANUP+=("${as_pg[*]} $pgbin/pg_ctl -D '$dir/data' -m immediate stop >/dev/null 2>&1")
  local role; role="$(sed -n 's#^url = "postgres://\([^@]*\)@.*#\1#p' "$work/config.toml")"
  psql -h "$dir" -p "$pgport" -U postgres -d postgres -Xq -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE $role LOGIN PASSWORD '$(tr -d '\n' <"$work/pg_password")'" -c "CREATE DATABASE scram OWNER $role"
  sed -e "s#^url = .*#url = \"postgres://$role@127.0.0.1:$pgport/scram\"#" "$work/config.toml" >"$work/scram.toml"
  chmod 644 "$work/scram.toml"
  local good_args=() a
  for a in "${args[@]}"; do good_args+=("${a//$work\/config.toml/$work/scram.toml}"); done
  local out
  out="$(podman run --rm "${good_args[@]}" "$IMAGE" setup 2>&1)" \
    || { echo "$out" >&2; die "smoke: the password from the secret file was refused by a scram-sha-256 server"; }
  printf 'wrong-password\n' >"$work/wrong_password"
  podman secret create "$name-wrong" "$work/wrong_password" >/dev/null
  SMOKE_CLEANUP+=("podman secret rm '$name-wrong' >/dev/null 2>&1")
  local bad_args=()
  for a in "${good_args[@]}"; do bad_args+=("${a//$name-pw,/$name-wrong,}"); done
  if out="$(podman run --rm "${bad_args[@]}" "$IMAGE" setup 2>&1)"; then
    die "smoke: a wrong password file was accepted"
  fi
  grep -q 'password authentication failed' <<<"$out" || { echo "$out" >&2; die "smoke: wrong password failed for another reason"; }
  log "password file: the secret's password authenticates against scram-sha-256 (127.0.0.1:$pgport); a wrong file is refused (password authentication failed for user $role)"
}

# ---------------------------------------------------------------- compose
PROM_STANDIN=localhost/kafka-pg-sink-standin/prometheus:2.42
PROJECT="${COMPOSE_PROJECT:-kpgs-compose}"
PC_VENV="$CACHE/podman-compose-venv"
PODMAN_COMPOSE_VERSION="${PODMAN_COMPOSE_VERSION:-1.6.0}"

podman_compose_install() {
  [ -f "$PC_VENV/.complete" ] && return
  local t0; t0="$(now)"
  log "installing podman-compose $PODMAN_COMPOSE_VERSION from PyPI into $PC_VENV"
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3 python3-venv
  rm -rf "$PC_VENV"
  python3 -m venv "$PC_VENV"
  "$PC_VENV/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION"
  touch "$PC_VENV/.complete"
  log "podman-compose installed in $(since "$t0") s"
}

standin_build() {  # name context
  local t0; t0="$(now)"
  TMPDIR="$CACHE/buildah-tmp" nice -n 10 podman build --pull=never --format docker --layers \
    --label "$STANDIN_LABEL=$1" -t "$1" "$2" >"$STATE/standin-$(basename "$2").log" 2>&1 \
    || { tail -30 "$STATE/standin-$(basename "$2").log" >&2; die "building the stand-in $1"; }
  log "stand-in $1 ready in $(since "$t0") s ($(human "$(podman image inspect --format '{{.Size}}' "$1")"))"
}

standins() {
  slim_image bookworm "$SLIM_IMAGE"
  slim_image trixie "$TRIXIE_IMAGE"
  local lib; lib="$(kafka_lib)"
  local ctx="$STATE/standin-kafka"
  rm -rf "$ctx"; mkdir -p "$ctx/libs"
  cp deploy/standins/kafka/* "$ctx/"
  cp -l "$lib"/*.jar "$ctx/libs/" 2>/dev/null || cp "$lib"/*.jar "$ctx/libs/"
  mkdir -p "$CACHE/buildah-tmp"
  standin_build "$KAFKA_IMAGE" "$ctx"
  standin_build "$PG_IMAGE" deploy/standins/postgres
  standin_build "$PROM_STANDIN" deploy/standins/prometheus
}

pcompose() {
  "$PC_VENV/bin/podman-compose" --in-pod false -p "$PROJECT" \
    -f docker-compose.yml -f "$STATE/compose.standins.yml" "$@"
}

# podman 4.3 (Debian bookworm) runs no healthcheck timers without systemd, and
# podman-compose skips `condition: service_healthy` below podman 4.6. So the
# compose file's own healthchecks are run here (`podman healthcheck run`)
# until they pass, the way the engine's scheduler would.
await_healthy() {  # timeout container...
  local deadline=$((SECONDS + $1)); shift
  local c
  for c in "$@"; do
    until podman healthcheck run "$c" >/dev/null 2>&1; do
      [ "$(podman inspect --format '{{.State.Running}}' "$c")" = true ] \
        || { podman logs --tail 30 "$c" >&2; die "compose: $c exited"; }
      [ $SECONDS -lt $deadline ] || { podman logs --tail 30 "$c" >&2; die "compose: $c not healthy"; }
      sleep 1
    done
  done
}

cip() { podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
psql_c() { podman exec "${PROJECT}_postgres_1" psql -U sink -d sink -XAtqc "$1"; }

compose() {
  engine
  podman image exists "$IMAGE" || build
  local t_all; t_all="$(now)"
  engine_check
  podman_compose_install
  standins
  local n="${COMPOSE_EVENTS:-20000}" pport; pport="$(free_port)"
  local work="$STATE/compose"; rm -rf "$work"; mkdir -p "$work"
  cat >"$STATE/compose.standins.yml" <<YAML
# Generated by scripts/container.sh: the sink image built from the Dockerfile,
# and Prometheus' local stand-in (Debian's 2.42, so not under the v3.1.0 name).
services:
  sink:
    image: $IMAGE
  prometheus:
    image: $PROM_STANDIN
YAML
  export PROMETHEUS_PORT="$pport"
  pcompose down -v -t 5 >/dev/null 2>&1 || true
  trap compose_cleanup EXIT

  # Started in the order of the file's depends_on, one service group at a
  # time (`up --no-deps`): podman-compose ignores `service_healthy` below
  # podman 4.6, and the `--requires` it adds for dependencies makes podman 4.3
  # fail to start the sink ("depends on container ... not found in input
  # list") -- it would also restart the finished kafka-init.
  local t0; t0="$(now)"
  log "compose project $PROJECT: kafka + postgres (stand-ins), health by the compose healthchecks"
  pcompose up -d --no-deps --no-build --pull never kafka postgres >"$work/up-1.log" 2>&1 \
    || { cat "$work/up-1.log" >&2; die "compose: up kafka postgres"; }
  await_healthy 180 "${PROJECT}_kafka_1" "${PROJECT}_postgres_1"
  log "kafka and postgres healthy after $(since "$t0") s"
  pcompose up -d --no-deps --no-build --pull never kafka-init >"$work/up-2.log" 2>&1 \
    || { cat "$work/up-2.log" >&2; die "compose: up kafka-init"; }
  local init_code; init_code="$(podman wait "${PROJECT}_kafka-init_1")"
  [ "$init_code" = 0 ] || { podman logs "${PROJECT}_kafka-init_1" >&2; die "compose: kafka-init exited $init_code"; }
  log "kafka-init completed (topic orders, 4 partitions)"
  pcompose up -d --no-deps --no-build --pull never sink >"$work/up-3.log" 2>&1 \
    || { cat "$work/up-3.log" >&2; die "compose: up sink"; }
  local s1="${PROJECT}_sink_1" s2="${PROJECT}_sink_2"
  podman container exists "$s2" || die "compose: deploy.replicas 2 did not make $s2"
  await_healthy 120 "$s1" "$s2"
  local ip1 ip2; ip1="$(cip "$s1")"; ip2="$(cip "$s2")"
  if ! wait_http_200 "http://$ip1:9187/readyz" 60 || ! wait_http_200 "http://$ip2:9187/readyz" 60; then
    podman logs --tail 30 "$s1" >&2; podman logs --tail 30 "$s2" >&2; die "compose: replicas not ready"
  fi
  log "2 sink replicas healthy and ready ($s1 $ip1, $s2 $ip2) $(since "$t0") s after up"
  local pa; pa="$(curl -s "http://$ip1:9187/readyz" | tr '\n' ' ')/ $(curl -s "http://$ip2:9187/readyz" | tr '\n' ' ')"
  log "readyz: $pa"
  local conns hba
  conns="$(psql_c "SELECT count(*) || ' from ' || string_agg(DISTINCT host(client_addr), ' ') FROM pg_stat_activity WHERE application_name = 'kafka-pg-sink'")"
  hba="$(psql_c "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' AND address = 'all' LIMIT 1")"
  log "postgres: sink connections over TCP: $conns; pg_hba for them: $hba (password from the pg_password secret file)"
  pcompose up -d --no-deps --no-build --pull never prometheus >"$work/up-4.log" 2>&1 \
    || { cat "$work/up-4.log" >&2; die "compose: up prometheus"; }

  # Prometheus resolves `sink` (dns_sd_configs) to both replicas and scrapes them.
  local up="" deadline=$((SECONDS + 90))
  while [ $SECONDS -lt $deadline ]; do
    up="$(curl -s "http://127.0.0.1:$pport/api/v1/query" --data-urlencode 'query=up{job="kafka-pg-sink"}' \
      | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(" ".join(sorted(x["metric"]["instance"]+"="+x["value"][1] for x in r)))' 2>/dev/null || true)"
    [ "$up" = "$(printf '%s\n' "$ip1:9187=1" "$ip2:9187=1" | sort | tr '\n' ' ' | sed 's/ $//')" ] && break
    sleep 2
  done
  [[ "$up" == *"$ip1:9187=1"* && "$up" == *"$ip2:9187=1"* ]] || die "compose: Prometheus up{job=kafka-pg-sink} = [$up]"
  log "Prometheus (127.0.0.1:$pport) scrapes both replicas: up{job=\"kafka-pg-sink\"} $up"

  # Produce in a stream, SIGKILL one replica mid-stream, then check exactness.
  gen_events "$n" >"$work/events.tsv"
  local total; total="$(wc -l <"$work/events.tsv")"
  split -l 1000 "$work/events.tsv" "$work/chunk."
  ( for f in "$work"/chunk.*; do cat "$f"; sleep 0.25; done ) \
    | podman exec -i "${PROJECT}_kafka_1" /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server localhost:9092 \
        --topic orders --reader-property parse.key=true --reader-property key.separator=$'\t' \
      >"$work/producer.log" 2>&1 &
  local producer=$!
  local stored=0; deadline=$((SECONDS + 120))
  while [ $SECONDS -lt $deadline ]; do
    stored="$(psql_c "SELECT coalesce(sum(next_offset),0) FROM sink_offsets WHERE topic = 'orders'" 2>/dev/null || echo 0)"
    [ "$stored" -ge $((total / 5)) ] && break
    sleep 0.2
  done
  podman kill -s KILL "$s1" >/dev/null
  log "SIGKILL $s1 mid-stream: $stored of $total messages stored at that moment"
  wait "$producer" || { cat "$work/producer.log" >&2; die "compose: producer failed"; }
  [ "$(podman inspect --format '{{.State.ExitCode}}' "$s1")" = 137 ] || die "compose: $s1 was not killed"
  local t_kill; t_kill="$(now)"
  deadline=$((SECONDS + 180))
  while [ $SECONDS -lt $deadline ]; do
    stored="$(psql_c "SELECT coalesce(sum(next_offset),0) FROM sink_offsets WHERE topic = 'orders'" 2>/dev/null || echo 0)"
    [ "$stored" = "$total" ] && break
    sleep 0.5
  done
  [ "$stored" = "$total" ] || { podman logs --tail 40 "$s2" >&2; die "compose: stored offsets $stored of $total"; }
  log "$s2 took over and caught up $(since "$t_kill") s after the producer finished"
  local ends stored_parts rows v2 dead dups
  ends="$(podman exec "${PROJECT}_kafka_1" /opt/kafka/bin/kafka-get-offsets.sh --bootstrap-server localhost:9092 --topic orders 2>/dev/null | end_offsets)"
  stored_parts="$(psql_c "SELECT partition || ':' || next_offset FROM sink_offsets WHERE topic = 'orders' ORDER BY partition" | tr '\n' ' ' | sed 's/ $//')"
  rows="$(psql_c "SELECT count(*) FROM orders")"
  v2="$(psql_c "SELECT count(*) FROM orders WHERE payload->>'version' = '2'")"
  dead="$(psql_c "SELECT count(*) FROM sink_dead_letters")"
  dups="$(curl -s "http://$ip2:9187/metrics" | awk '/^kafka_pg_sink_duplicates_total/ {d += $2} END {print d + 0}')"
  log "end offsets [$ends], stored [$stored_parts]; rows $rows (distinct keys $n), version 2: $v2, dead letters $dead; $s2 counted $dups duplicates"
  [ "$ends" = "$stored_parts" ] || die "compose: stored offsets differ from end offsets"
  if [ "$rows" != "$n" ] || [ "$v2" != "$(( (n + 9) / 10 ))" ] || [ "$dead" != 0 ]; then die "compose: table not exact"; fi

  t0="$(now)"
  pcompose down -v -t 40 >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; die "compose: down"; }
  trap - EXIT
  log "compose down in $(since "$t0") s"
  log "compose OK in $(since "$t_all") s"
  echo "compose_seconds=$(since "$t_all")" >"$STATE/compose.result"
}

compose_cleanup() {
  local rc=$?
  if [ "${KEEP:-0}" = 1 ]; then log "KEEP=1: leaving compose project $PROJECT up"; return $rc; fi
  pcompose down -v -t 5 >/dev/null 2>&1 || true
  return $rc
}

cmd="${1:-all}"
case "$cmd" in
  engine) engine ;;
  base-images) base_images ;;
  build) build ;;
  smoke) smoke ;;
  compose) compose ;;
  standins) engine; standins ;;
  all) t_all="$(now)"; build; smoke; compose; log "all steps OK in $(since "$t_all") s" ;;
  *) echo "usage: $0 [engine|base-images|build|smoke|standins|compose|all]" >&2; exit 2 ;;
esac
