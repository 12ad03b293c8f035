#!/usr/bin/env bash
# Real Kafka Connect (standalone) with the Debezium Postgres source and JDBC sink
# connectors, and the Debezium MySQL source (captures MariaDB 10.11 only in
# scripts/mariadb.sh's compatibility mode, see there), jars resolved on Maven Central and
# cached. For tests and peer benches.
#   scripts/connect.sh fetch                        resolve runtime + plugins (once; the
#                                                   MySQL plugin is added to an older cache)
#   scripts/connect.sh fetch-avro-converter         (opt-in; `fetch` does not do it)
#                                                   Apicurio's Avro converter 2.6.x as plugin
#                                                   dir apicurio-converter (Confluent wire
#                                                   format with as-confluent + use-id=contentId
#                                                   + headers.enabled=false; see
#                                                   docs/cdc-samples/avro/README.md)
#   scripts/connect.sh source-db ensure|stop|status|url [DB]|psql [DB] [ARGS]
#                                                   a second Postgres cluster (15/cdc,
#                                                   port 5433, wal_level=logical)
#   scripts/connect.sh start NAME WORKER_PROPS|- CONNECTOR_PROPS...
#                                                   standalone worker NAME; waits until
#                                                   every connector's tasks are RUNNING
#   scripts/connect.sh stop|kill|status|url|log|pid NAME   (kill = SIGKILL, for crash tests,
#                                                   never mid-write of the offsets file)
#   scripts/connect.sh clean NAME                   stop, drop its source slots/publications
#                                                   (MySQL: its schema history file),
#                                                   forget its state
#   scripts/connect.sh source-props NAME --db DB --tables T1,T2 --prefix P
#            [--schemas] [--partitions N] [KEY=VALUE...]    Debezium Postgres source
#   scripts/connect.sh mysql-source-props NAME --db DB --tables T1,T2 --prefix P
#            [--schemas] [--partitions N] [KEY=VALUE...]    Debezium MySQL source on the
#                                                   scripts/mariadb.sh instance (tables
#                                                   without "DB." get it; schema history in
#                                                   $CONNECT_STATE_DIR/schema-history/NAME.dat)
#   scripts/connect.sh jdbc-sink-props NAME --topic T --url DB_URL --table TABLE
#            [--tasks N] [--batch N] [--best] [--schema JSON] [--key-field F]
#            [--timestamp-field F|""] [--flatten] [KEY=VALUE...]
#                                                   Debezium JDBC sink for plain JSON values
# Each worker NAME lives in $CONNECT_STATE_DIR/NAME (worker.properties, offsets file,
# connect.log, pid, rest.port); its REST port is picked free from 18083 up.
# Source-connector offsets stay in that state dir across stop/kill/start (a restart
# resumes); sink offsets are the consumer group connect-<connector name>.
# Env: CONNECT_VERSION (4.3.1), DEBEZIUM_VERSION (3.6.0.Final), KAFKA_BROKERS
#      (127.0.0.1:9092), KAFKA_PG_SINK_CACHE (~/.cache/kafka-pg-sink),
#      CONNECT_STATE_DIR (/tmp/kafka-pg-sink-connect), CDC_PGPORT (5433),
#      CONNECT_HEAP (-Xmx1g), CONNECT_WAIT_S (180), CONNECT_MAVEN_REPO (maven.repo.local),
#      DEBEZIUM_MYSQL_VERSION (3.6.1.Final), MARIADB_PORT (3307), MARIADB_USER (debezium),
#      MARIADB_PASSWORD (dbz), APICURIO_CONVERTER_VERSION (2.6.13.Final).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNECT_VERSION="${CONNECT_VERSION:-4.3.1}"
DEBEZIUM_VERSION="${DEBEZIUM_VERSION:-3.6.0.Final}"
HIBERNATE_VERSION="${HIBERNATE_VERSION:-7.2.19.Final}"
LOG4J_VERSION=2.24.3
CACHE="${KAFKA_PG_SINK_CACHE:-$HOME/.cache/kafka-pg-sink}"
HOME_DIR="$CACHE/connect-$CONNECT_VERSION"
LIB="$HOME_DIR/lib"
PLUGINS="$HOME_DIR/plugins"
SETTINGS="$HOME_DIR/maven-settings.xml"
STATE_ROOT="${CONNECT_STATE_DIR:-/tmp/kafka-pg-sink-connect}"
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
CDC_PORT="${CDC_PGPORT:-5433}"
CDC_CLUSTER=cdc
WAIT_S="${CONNECT_WAIT_S:-180}"
# --- MySQL/MariaDB source: its own Debezium version and the scripts/mariadb.sh instance
DEBEZIUM_MYSQL_VERSION="${DEBEZIUM_MYSQL_VERSION:-3.6.1.Final}"
MARIADB_PORT="${MARIADB_PORT:-3307}"
MARIADB_USER="${MARIADB_USER:-debezium}"
MARIADB_PASSWORD="${MARIADB_PASSWORD:-dbz}"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

log() { echo "[connect] $*" >&2; }
die() { log "$*"; exit 1; }

need_tools() {
  local missing=()
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# ---------------------------------------------------------------- fetch
# Debezium's parent POM names a repository that is not reachable: mirror all to Central.
write_settings() {
  mkdir -p "$HOME_DIR"
  cat >"$SETTINGS" <<'XML'
<settings xmlns="http://maven.apache.org/SETTINGS/1.0.0">
  <mirrors>
    <mirror><id>central-only</id><mirrorOf>*</mirrorOf><url>https://repo.maven.apache.org/maven2</url></mirror>
  </mirrors>
</settings>
XML
}

# Exclusions shared by both plugins: the worker provides Kafka, slf4j and Jackson core
# (a second Jackson in the plugin dir kills tasks: "BlackbirdModule not a subtype").
PLUGIN_EXCLUSIONS='<exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.slf4j</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.core</groupId><artifactId>*</artifactId></exclusion>'

write_poms() {
  local work="$1"
  mkdir -p "$work/lib" "$work/debezium-postgres" "$work/debezium-jdbc"
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kafka-pg-sink</groupId><artifactId>connect</artifactId><version>1</version>
  <packaging>pom</packaging>
  <modules><module>lib</module><module>debezium-postgres</module><module>debezium-jdbc</module></modules>
</project>
POM
  module() { # dir, dependencies xml, extra
    cat >"$work/$1/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kafka-pg-sink</groupId><artifactId>connect-$1</artifactId><version>1</version>
  <packaging>pom</packaging>
  $3
  <dependencies>
$2
  </dependencies>
</project>
POM
  }
  # Kafka's slf4j-api is 1.7.x: bind it with log4j-slf4j-impl (the slf4j2 binding stays silent).
  module lib "
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId><version>$CONNECT_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-json</artifactId><version>$CONNECT_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-transforms</artifactId><version>$CONNECT_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>" ""
  module debezium-postgres "
    <dependency><groupId>io.debezium</groupId><artifactId>debezium-connector-postgres</artifactId><version>$DEBEZIUM_VERSION</version>
      $PLUGIN_EXCLUSIONS
      </exclusions></dependency>" ""
  # hibernate-agroal 7.2.6.Final (what Debezium names, as org.hibernate) is not on
  # Central: use org.hibernate.orm 7.2.19.Final for both. Only the Postgres driver
  # is kept (the MySQL/MariaDB/SQL Server/Oracle drivers are ~12 MB of download).
  module debezium-jdbc "
    <dependency><groupId>io.debezium</groupId><artifactId>debezium-connector-jdbc</artifactId><version>$DEBEZIUM_VERSION</version>
      $PLUGIN_EXCLUSIONS
        <exclusion><groupId>org.hibernate</groupId><artifactId>hibernate-agroal</artifactId></exclusion>
        <exclusion><groupId>com.mysql</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.mariadb.jdbc</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>com.microsoft.sqlserver</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>com.oracle.database.jdbc</groupId><artifactId>*</artifactId></exclusion>
      </exclusions></dependency>
    <dependency><groupId>org.hibernate.orm</groupId><artifactId>hibernate-agroal</artifactId><version>$HIBERNATE_VERSION</version>
      $PLUGIN_EXCLUSIONS
      </exclusions></dependency>" "
  <dependencyManagement><dependencies>
    <dependency><groupId>org.hibernate.orm</groupId><artifactId>hibernate-core</artifactId><version>$HIBERNATE_VERSION</version></dependency>
  </dependencies></dependencyManagement>"
}

fetch() {
  fetch_core
  fetch_mysql
}

fetch_core() {
  if [ -f "$LIB/.complete" ] && [ -f "$PLUGINS/debezium-postgres/.complete" ] \
     && [ -f "$PLUGINS/debezium-jdbc/.complete" ]; then return; fi
  need_tools
  local t0=$SECONDS
  log "resolving Kafka Connect $CONNECT_VERSION + Debezium $DEBEZIUM_VERSION from Maven Central into $HOME_DIR"
  write_settings
  local work; work="$(mktemp -d)"
  write_poms "$work"
  local repo=()
  [ -n "${CONNECT_MAVEN_REPO:-}" ] && repo=("-Dmaven.repo.local=$CONNECT_MAVEN_REPO")
  # One reactor, so Maven and its plugins start once; each module copies its own closure.
  (cd "$work" && mvn -q -B -s "$SETTINGS" "${repo[@]}" \
      org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory=target/jars >"$work/mvn.log" 2>&1) \
    || { cat "$work/mvn.log" >&2; rm -rf "$work"; exit 1; }
  mkdir -p "$PLUGINS"
  rm -rf "$LIB" "$PLUGINS/debezium-postgres" "$PLUGINS/debezium-jdbc"
  mv "$work/lib/target/jars" "$LIB"
  mv "$work/debezium-postgres/target/jars" "$PLUGINS/debezium-postgres"
  mv "$work/debezium-jdbc/target/jars" "$PLUGINS/debezium-jdbc"
  for d in "$PLUGINS/debezium-postgres" "$PLUGINS/debezium-jdbc"; do
    if ls "$d" | grep -Eq '^(kafka-clients|connect-api|slf4j-api|jackson-(core|databind|annotations))-'; then
      die "unexpected worker jar in $d: $(ls "$d" | grep -E '^(kafka|connect|slf4j|jackson-(core|databind))')"
    fi
  done
  touch "$LIB/.complete" "$PLUGINS/debezium-postgres/.complete" "$PLUGINS/debezium-jdbc/.complete"
  rm -rf "$work"
  log "cached $(ls "$LIB" | wc -l) runtime jars, $(ls "$PLUGINS/debezium-postgres" | wc -l) + $(ls "$PLUGINS/debezium-jdbc" | wc -l) plugin jars ($(du -sh "$HOME_DIR" | cut -f1)) in $((SECONDS - t0)) s"
}

# --- MySQL source plugin. Resolved on its own, so an existing cache keeps its
# runtime and other plugins (workers may be running on them); the directory appears in
# plugin.path only once complete (built beside it, then renamed). Same exclusions; the
# MySQL Connector/J driver it brings is kept (it talks to MariaDB 10.11 too).
fetch_mysql() {
  local dir="$PLUGINS/debezium-mysql"
  [ -f "$dir/.complete" ] && return
  need_tools
  local t0=$SECONDS
  log "resolving Debezium MySQL connector $DEBEZIUM_MYSQL_VERSION from Maven Central into $dir"
  [ -f "$SETTINGS" ] || write_settings
  mkdir -p "$PLUGINS"
  local work; work="$(mktemp -d "$HOME_DIR/.fetch-mysql.XXXXXX")"
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kafka-pg-sink</groupId><artifactId>connect-debezium-mysql</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>io.debezium</groupId><artifactId>debezium-connector-mysql</artifactId><version>$DEBEZIUM_MYSQL_VERSION</version>
      $PLUGIN_EXCLUSIONS
      </exclusions></dependency>
    <dependency><groupId>io.debezium</groupId><artifactId>debezium-storage-file</artifactId><version>$DEBEZIUM_MYSQL_VERSION</version>
      $PLUGIN_EXCLUSIONS
      </exclusions></dependency>
  </dependencies>
</project>
POM
  local repo=()
  [ -n "${CONNECT_MAVEN_REPO:-}" ] && repo=("-Dmaven.repo.local=$CONNECT_MAVEN_REPO")
  (cd "$work" && mvn -q -B -s "$SETTINGS" "${repo[@]}" \
      org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory=target/jars >"$work/mvn.log" 2>&1) \
    || { cat "$work/mvn.log" >&2; rm -rf "$work"; exit 1; }
  if ls "$work/target/jars" | grep -Eq '^(kafka-clients|connect-api|slf4j-api|jackson-(core|databind|annotations))-'; then
    die "unexpected worker jar in the MySQL plugin: $(ls "$work/target/jars" | grep -E '^(kafka|connect|slf4j|jackson-(core|databind))')"
  fi
  touch "$work/target/jars/.complete"
  rm -rf "$dir"
  mv "$work/target/jars" "$dir"
  rm -rf "$work"
  log "cached $(ls "$dir" | wc -l) MySQL plugin jars ($(du -sh "$dir" | cut -f1)) in $((SECONDS - t0)) s"
}

# --- Apicurio Avro converter (opt-in: only `fetch-avro-converter` resolves it).
# io.apicurio:apicurio-registry-utils-converter (AvroConverter) is on Maven Central;
# Confluent's AvroConverter is not. Its jar has no META-INF/services manifest, so with
# plugin.discovery=service_load the worker would not see it: a one-file jar with the
# Converter manifest is added (what `connect-plugin-path sync-manifests` would write).
APICURIO_CONVERTER_VERSION="${APICURIO_CONVERTER_VERSION:-2.6.13.Final}"
fetch_avro_converter() {
  local dir="$PLUGINS/apicurio-converter"
  [ -f "$dir/.complete" ] && { echo "$dir"; return; }
  need_tools
  local t0=$SECONDS
  log "resolving Apicurio converter $APICURIO_CONVERTER_VERSION from Maven Central into $dir"
  [ -f "$SETTINGS" ] || write_settings
  mkdir -p "$PLUGINS"
  local work; work="$(mktemp -d "$HOME_DIR/.fetch-apicurio.XXXXXX")"
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kafka-pg-sink</groupId><artifactId>connect-apicurio-converter</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>io.apicurio</groupId><artifactId>apicurio-registry-utils-converter</artifactId><version>$APICURIO_CONVERTER_VERSION</version>
      $PLUGIN_EXCLUSIONS
      </exclusions></dependency>
  </dependencies>
</project>
POM
  local repo=()
  [ -n "${CONNECT_MAVEN_REPO:-}" ] && repo=("-Dmaven.repo.local=$CONNECT_MAVEN_REPO")
  (cd "$work" && mvn -q -B -s "$SETTINGS" "${repo[@]}" \
      org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory=target/jars >"$work/mvn.log" 2>&1) \
    || { cat "$work/mvn.log" >&2; rm -rf "$work"; exit 1; }
  mkdir -p "$work/manifest/META-INF/services"
  printf '%s\n' io.apicurio.registry.utils.converter.AvroConverter io.apicurio.registry.utils.converter.ExtJsonConverter \
    >"$work/manifest/META-INF/services/org.apache.kafka.connect.storage.Converter"
  (cd "$work/manifest" && jar cf "$work/target/jars/zz-apicurio-converter-service-manifest.jar" META-INF) \
    || die "could not write the service manifest jar (jar from the JDK)"
  touch "$work/target/jars/.complete"
  rm -rf "$dir"; mv "$work/target/jars" "$dir"; rm -rf "$work"
  log "cached $(ls "$dir" | wc -l) Apicurio converter jars ($(du -sh "$dir" | cut -f1)) in $((SECONDS - t0)) s"
  echo "$dir"
}

# ---------------------------------------------------------------- source-db
pg_version() { ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1; }
cdc_conf() { echo "/etc/postgresql/$(pg_version)/$CDC_CLUSTER"; }
cdc_url() { echo "postgres://postgres@127.0.0.1:$CDC_PORT/${1:-postgres}"; }
cdc_answers() { psql "$(cdc_url)" -XAtqc 'select 1' >/dev/null 2>&1; }
cdc_online() { pg_lsclusters -h 2>/dev/null | awk -v v="$(pg_version)" -v c="$CDC_CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; }

source_db_ensure() {
  if ! command -v pg_createcluster >/dev/null || [ -z "$(pg_version)" ]; then
    log "installing Debian postgresql"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-client >/dev/null
  fi
  local ver; ver="$(pg_version)"
  local conf; conf="$(cdc_conf)"
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$ver $CDC_CLUSTER"; then
    log "creating cluster $ver/$CDC_CLUSTER on port $CDC_PORT"
    # --start-conf manual: Debian's init scripts leave it alone; this script starts it.
    $SUDO pg_createcluster "$ver" "$CDC_CLUSTER" --port "$CDC_PORT" --start-conf manual >/dev/null
  fi
  local restart=0
  if ! grep -q '^# kafka-pg-sink cdc settings' "$conf/postgresql.conf"; then
    $SUDO tee -a "$conf/postgresql.conf" >/dev/null <<CONF
# kafka-pg-sink cdc settings
port = $CDC_PORT
listen_addresses = '127.0.0.1'
wal_level = logical
max_replication_slots = 16
max_wal_senders = 16
max_connections = 100
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
    restart=1
  fi
  # Test environment only: trust loopback, placed FIRST (Debian's scram lines match earlier).
  if ! grep -q 'kafka-pg-sink cdc access' "$conf/pg_hba.conf"; then
    local tmp; tmp="$(mktemp)"
    {
      echo "# kafka-pg-sink cdc access (test only)"
      echo "local all all trust"
      echo "local replication all trust"
      echo "host all all 127.0.0.1/32 trust"
      echo "host replication all 127.0.0.1/32 trust"
      echo "host all all ::1/128 trust"
      echo "host replication all ::1/128 trust"
      cat "$conf/pg_hba.conf"
    } >"$tmp"
    $SUDO cp "$tmp" "$conf/pg_hba.conf"; rm -f "$tmp"
    restart=1
  fi
  if ! cdc_online; then
    log "starting cluster $ver/$CDC_CLUSTER"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" "$CDC_CLUSTER" start
  elif [ "$restart" = 1 ]; then
    log "restarting cluster $ver/$CDC_CLUSTER for new settings"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" "$CDC_CLUSTER" restart -m fast
  fi
  for _ in $(seq 1 60); do
    if cdc_answers; then
      local wl; wl="$(psql "$(cdc_url)" -XAtqc 'show wal_level')"
      [ "$wl" = logical ] || die "cluster on $CDC_PORT has wal_level=$wl"
      log "ready at $(cdc_url) (wal_level=logical)"; return
    fi
    sleep 0.5
  done
  die "cluster $ver/$CDC_CLUSTER did not answer on $CDC_PORT"
}

source_db() {
  local sub="${1:-ensure}"; shift || true
  case "$sub" in
    ensure) source_db_ensure ;;
    stop) cdc_online && $SUDO pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" "$CDC_CLUSTER" stop -m fast || true ;;
    status) cdc_answers && echo up || echo down ;;
    url) cdc_url "${1:-postgres}" ;;
    psql) local db=postgres; if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then db="$1"; shift; fi
          exec psql "$(cdc_url "$db")" -X "$@" ;;
    *) die "usage: $0 source-db ensure|stop|status|url [DB]|psql [ARGS]" ;;
  esac
}

# ---------------------------------------------------------------- workers
state_of() { [ -n "${1:-}" ] || die "missing worker NAME"; echo "$STATE_ROOT/$1"; }
rest_port() { cat "$(state_of "$1")/rest.port" 2>/dev/null; }
# Only a pid that is still our worker counts (see live_pid in lib.sh).
worker_pid() { live_pid "$(state_of "$1")/pid" "$(state_of "$1")/worker.properties"; }
worker_alive() { [ -n "$(worker_pid "$1")" ]; }
rest() { curl -sf --max-time 5 "http://127.0.0.1:$(rest_port "$1")$2"; }

pick_port() {
  local p=18083
  while port_open "$p" || grep -qsx "$p" "$STATE_ROOT"/*/rest.port; do p=$((p + 1)); done
  echo "$p"
}

prop_of() { sed -n "s/^[[:space:]]*$2[[:space:]]*[=:][[:space:]]*//p" "$1" | tail -1; }

write_worker() {
  local name="$1" user="$2" st; st="$(state_of "$name")"
  {
    echo "# generated by scripts/connect.sh: defaults, then $user, then forced settings"
    echo "bootstrap.servers=$BROKERS"
    echo "key.converter=org.apache.kafka.connect.json.JsonConverter"
    echo "value.converter=org.apache.kafka.connect.json.JsonConverter"
    echo "key.converter.schemas.enable=false"
    echo "value.converter.schemas.enable=false"
    echo "offset.flush.interval.ms=1000"
    echo "connector.client.config.override.policy=All"
    echo "task.shutdown.graceful.timeout.ms=5000"
    if [ "$user" != - ]; then echo "# --- $user"; cat "$user"; echo; fi
    echo "# --- forced"
    echo "offset.storage.file.filename=$st/offsets.dat"
    echo "listeners=http://127.0.0.1:$(rest_port "$name")"
    echo "rest.advertised.host.name=127.0.0.1"
    echo "plugin.path=$PLUGINS"
    echo "plugin.discovery=service_load"
  } >"$st/worker.properties"
  cat >"$st/log4j2.properties" <<L4J
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $st/connect.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.runtime.name = org.apache.kafka.connect.runtime
logger.runtime.level = INFO
logger.hibernate.name = org.hibernate
logger.hibernate.level = WARN
L4J
}

# Waits until every named connector and all its tasks are RUNNING (at least one task).
wait_running() {
  local name="$1"; shift
  local st; st="$(state_of "$name")"
  local deadline=$((SECONDS + WAIT_S)) c body states
  for c in "$@"; do
    while :; do
      if ! worker_alive "$name"; then log "worker $name exited"; tail -60 "$st/connect.log" >&2; return 1; fi
      body="$(rest "$name" "/connectors/$c/status" 2>/dev/null || true)"
      states="$(grep -o '"state":"[A-Z_]*"' <<<"$body" | cut -d'"' -f4 | tr '\n' ' ')"
      if grep -q FAILED <<<"$states"; then
        log "connector $c: $states"; grep -o 'Caused by: [^\\]*' <<<"$body" | tail -1 >&2 || true
        tail -30 "$st/connect.log" >&2; return 1
      fi
      # connector state first, then one per task
      if [ -n "$states" ] && [ "$(wc -w <<<"$states")" -ge 2 ] \
         && [ -z "$(tr ' ' '\n' <<<"$states" | grep -v '^RUNNING$' | grep -v '^$' || true)" ]; then
        break
      fi
      if [ $SECONDS -ge $deadline ]; then
        log "connector $c not RUNNING after ${WAIT_S}s: ${states:-no status}"; tail -60 "$st/connect.log" >&2; return 1
      fi
      sleep 0.2
    done
  done
}

start() {
  local name="${1:-}" user="${2:-}"; shift 2 || die "usage: $0 start NAME WORKER_PROPS|- CONNECTOR_PROPS..."
  [ $# -ge 1 ] || die "usage: $0 start NAME WORKER_PROPS|- CONNECTOR_PROPS..."
  fetch
  local st; st="$(state_of "$name")"
  if worker_alive "$name"; then die "worker $name already running (pid $(worker_pid "$name"))"; fi
  mkdir -p "$st"
  local t0; t0="$(date +%s.%N)"
  pick_port >"$st/rest.port"
  write_worker "$name" "$user"
  local files=() names=() i=0 f cn
  for f in "$@"; do
    i=$((i + 1))
    cp "$f" "$st/connector-$i.properties"
    cn="$(prop_of "$st/connector-$i.properties" name)"
    if [ -z "$cn" ]; then cn="$name"; echo "name=$name" >>"$st/connector-$i.properties"; fi
    files+=("$st/connector-$i.properties"); names+=("$cn")
  done
  : >>"$st/connect.log"
  echo "==== start $(date -u +%FT%TZ)" >>"$st/connect.log"
  log "starting worker $name on REST 127.0.0.1:$(rest_port "$name") (state $st)"
  nohup java ${CONNECT_HEAP:--Xmx1g} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$st/log4j2.properties" \
    -cp "$LIB/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$st/worker.properties" "${files[@]}" >>"$st/stdout.log" 2>&1 </dev/null &
  echo $! >"$st/pid"
  wait_running "$name" "${names[@]}" || exit 1
  local t1; t1="$(date +%s.%N)"
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f\n", b-a}' >"$st/startup_s"
  log "worker $name running ${names[*]} (pid $(worker_pid "$name"), $(cat "$st/startup_s") s to RUNNING)"
}

stop_sig() {
  local st; st="$(state_of "$1")"
  stop_pidfile "$2" "$st/pid" "$st/worker.properties"
}

# SIGKILL for crash tests, never while the worker rewrites its offsets file.
# Standalone Connect's FileOffsetBackingStore truncates offsets.dat and then writes
# it (not atomic), and a worker that starts on an empty or cut file takes it as "no
# offsets" without a word: a source connector then snapshots again, and rows deleted
# meanwhile stay in every sink (docs/cdc.md; CI of tests/cdc_mysql.rs). The test
# means a crash mid-stream, so the worker is frozen (SIGSTOP) while the file is
# checked, and thawed for a moment when a write is half done.
kill_worker() {
  local name="$1" st pid; st="$(state_of "$name")"
  pid="$(worker_pid "$name")"; [ -n "$pid" ] || return 0
  for _ in $(seq 1 200); do
    kill -STOP "$pid" 2>/dev/null || return 0
    if offsets_whole "$st/offsets.dat"; then stop_sig "$name" KILL; return 0; fi
    kill -CONT "$pid" 2>/dev/null || true; sleep 0.01
  done
  kill -CONT "$pid" 2>/dev/null || true
  die "worker $name: $st/offsets.dat stayed incomplete over 200 tries"
}

# An offsets file a restart reads: absent (never flushed), or a whole Java
# serialization stream, which ends with the HashMap's TC_ENDBLOCKDATA (0x78). The
# worker writes it unbuffered, a dozen writes per save (strace), and none before the
# last ends with 0x78: the header, class descriptors, lengths and the JSON keys and
# values end with other bytes. Empty means frozen between the truncate and the writes.
offsets_whole() {
  [ ! -e "$1" ] || { [ -s "$1" ] && [ "$(tail -c 1 "$1" | od -An -tx1 | tr -d ' \n')" = 78 ]; }
}

# Forget a worker: stop it, drop the replication slots and publications its Postgres
# source connectors created on the CDC cluster, remove its state directory.
clean() {
  local name="$1" st f slot pub db hist; st="$(state_of "$name")"
  stop_sig "$name" TERM
  for f in "$st"/connector-*.properties; do
    [ -f "$f" ] || continue
    if grep -q 'MySqlConnector' "$f"; then   # its schema history file goes too
      hist="$(prop_of "$f" schema.history.internal.file.filename)"; [ -z "$hist" ] || rm -f "$hist"
      continue
    fi
    grep -q 'PostgresConnector' "$f" || continue
    slot="$(prop_of "$f" slot.name)"; pub="$(prop_of "$f" publication.name)"; db="$(prop_of "$f" database.dbname)"
    cdc_answers || continue
    psql "$(cdc_url "$db")" -XqAt -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '$slot' and not active" \
      -c "drop publication if exists \"$pub\"" >/dev/null 2>&1 || log "could not drop slot $slot / publication $pub in $db"
  done
  rm -rf "$st"
}

status() {
  local name="$1"
  if ! worker_alive "$name"; then echo down; return 1; fi
  local cs; cs="$(rest "$name" /connectors || echo '[]')"
  local c
  for c in $(grep -o '"[^"]*"' <<<"$cs" | tr -d '"'); do rest "$name" "/connectors/$c/status"; echo; done
}

# ---------------------------------------------------------------- connector properties
jdbc_url() { # postgres://user[:pw]@host:port/db or jdbc:postgresql://… → "jdbc_url user password"
  local u="$1"
  case "$u" in
    jdbc:*) echo "$u postgres -" ;;
    postgres://*|postgresql://*)
      local rest="${u#*://}" cred="" host db user pw
      if [[ "$rest" == *@* ]]; then cred="${rest%%@*}"; rest="${rest#*@}"; fi
      user="${cred%%:*}"; [ -n "$user" ] || user=postgres
      pw="-"; [[ "$cred" == *:* ]] && pw="${cred#*:}"
      host="${rest%%/*}"; db="${rest#*/}"; [ "$db" != "$rest" ] || db=postgres
      echo "jdbc:postgresql://$host/$db $user $pw" ;;
    *) die "unsupported database URL: $u" ;;
  esac
}

source_props() {
  local name="${1:-}"; shift || true
  [ -n "$name" ] || die "usage: $0 source-props NAME --db DB --tables T1,T2 --prefix P [--schemas] [--partitions N] [KEY=VALUE...]"
  local db="" tables="" prefix="" schemas=false parts=1 extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --db) db="$2"; shift 2 ;;
      --tables) tables="$2"; shift 2 ;;
      --prefix) prefix="$2"; shift 2 ;;
      --schemas) schemas=true; shift ;;
      --partitions) parts="$2"; shift 2 ;;
      *=*) extra+=("$1"); shift ;;
      *) die "source-props: unknown argument $1" ;;
    esac
  done
  [ -n "$db" ] && [ -n "$tables" ] && [ -n "$prefix" ] || die "source-props needs --db, --tables and --prefix"
  local slot; slot="$(tr -c 'a-zA-Z0-9_\n' _ <<<"kpgs_$name" | tr 'A-Z' 'a-z')"
  cat <<PROPS
name=$name
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname=127.0.0.1
database.port=$CDC_PORT
database.user=postgres
database.password=postgres
database.dbname=$db
topic.prefix=$prefix
table.include.list=$tables
plugin.name=pgoutput
slot.name=$slot
publication.name=${slot}_pub
publication.autocreate.mode=filtered
decimal.handling.mode=string
snapshot.mode=initial
topic.creation.default.replication.factor=1
topic.creation.default.partitions=$parts
key.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=$schemas
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=$schemas
PROPS
  local kv; for kv in "${extra[@]}"; do echo "$kv"; done
}

# --- MySQL source: the Debezium MySQL connector on the scripts/mariadb.sh instance.
# Its schema history is a file per connector NAME under $CONNECT_STATE_DIR/schema-history
# (`clean` removes it with the worker), so offsets and history live and go together.
mysql_source_props() {
  local name="${1:-}"; shift || true
  [ -n "$name" ] || die "usage: $0 mysql-source-props NAME --db DB --tables T1,T2 --prefix P [--schemas] [--partitions N] [KEY=VALUE...]"
  local db="" tables="" prefix="" schemas=false parts=1 extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --db) db="$2"; shift 2 ;;
      --tables) tables="$2"; shift 2 ;;
      --prefix) prefix="$2"; shift 2 ;;
      --schemas) schemas=true; shift ;;
      --partitions) parts="$2"; shift 2 ;;
      *=*) extra+=("$1"); shift ;;
      *) die "mysql-source-props: unknown argument $1" ;;
    esac
  done
  [ -n "$db" ] && [ -n "$tables" ] && [ -n "$prefix" ] || die "mysql-source-props needs --db, --tables and --prefix"
  local t qualified=()
  IFS=, read -ra t <<<"$tables"
  for t in "${t[@]}"; do [[ "$t" == *.* ]] && qualified+=("$t") || qualified+=("$db.$t"); done
  # A replica id of its own per connector (the server is server_id 1).
  local sid=$((100000 + $(cksum <<<"$name" | cut -d' ' -f1) % 100000))
  mkdir -p "$STATE_ROOT/schema-history"
  cat <<PROPS
name=$name
connector.class=io.debezium.connector.mysql.MySqlConnector
tasks.max=1
database.hostname=127.0.0.1
database.port=$MARIADB_PORT
database.user=$MARIADB_USER
database.password=$MARIADB_PASSWORD
database.server.id=$sid
topic.prefix=$prefix
database.include.list=$db
table.include.list=$(IFS=,; echo "${qualified[*]}")
schema.history.internal=io.debezium.storage.file.history.FileSchemaHistory
schema.history.internal.file.filename=$STATE_ROOT/schema-history/$name.dat
decimal.handling.mode=string
snapshot.mode=initial
topic.creation.default.replication.factor=1
topic.creation.default.partitions=$parts
key.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=$schemas
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=$schemas
PROPS
  local kv; for kv in "${extra[@]}"; do echo "$kv"; done
}

# The order event shape of the benches: {"order_id","customer","amount","currency",
# "status","version","ts"} with the Kafka key = order_id as a plain string.
ORDER_SCHEMA='{"type":"struct","optional":false,"fields":[{"field":"order_id","type":"string","optional":false},{"field":"customer","type":"string","optional":true},{"field":"amount","type":"double","optional":true},{"field":"currency","type":"string","optional":true},{"field":"status","type":"string","optional":true},{"field":"version","type":"int64","optional":true},{"field":"ts","type":"string","optional":true}]}'

jdbc_sink_props() {
  local name="${1:-}"; shift || true
  [ -n "$name" ] || die "usage: $0 jdbc-sink-props NAME --topic T --url DB_URL --table TABLE [--tasks N] [--batch N] [--best] [--schema JSON] [--key-field F] [--timestamp-field F] [--flatten] [KEY=VALUE...]"
  local topic="" url="" table="" tasks=1 batch=500 best=0 schema="$ORDER_SCHEMA" key_field=order_id ts_field=ts flatten=0 extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --topic) topic="$2"; shift 2 ;;
      --url) url="$2"; shift 2 ;;
      --table) table="$2"; shift 2 ;;
      --tasks) tasks="$2"; shift 2 ;;
      --batch) batch="$2"; shift 2 ;;
      --best) best=1; tasks=4; batch=5000; shift ;;
      --schema) schema="$2"; shift 2 ;;
      --key-field) key_field="$2"; shift 2 ;;
      --timestamp-field) ts_field="$2"; shift 2 ;;
      --flatten) flatten=1; shift ;;
      *=*) extra+=("$1"); shift ;;
      *) die "jdbc-sink-props: unknown argument $1" ;;
    esac
  done
  [ -n "$topic" ] && [ -n "$url" ] && [ -n "$table" ] || die "jdbc-sink-props needs --topic, --url and --table"
  local j user pw; read -r j user pw <<<"$(jdbc_url "$url")"
  local transforms="hoistKey"
  [ "$flatten" = 1 ] && transforms="$transforms,flatten"
  [ -n "$ts_field" ] && transforms="$transforms,ts"
  cat <<PROPS
name=$name
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
tasks.max=$tasks
topics=$topic
connection.url=$j?stringtype=unspecified
connection.username=$user
PROPS
  [ "$pw" != - ] && echo "connection.password=$pw"
  cat <<PROPS
collection.name.format=$table
insert.mode=upsert
primary.key.mode=record_key
primary.key.fields=$key_field
delete.enabled=false
schema.evolution=none
batch.size=$batch
consumer.override.max.poll.records=$batch
consumer.override.auto.offset.reset=earliest
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=true
value.converter.schema.content=$schema
transforms=$transforms
transforms.hoistKey.type=org.apache.kafka.connect.transforms.HoistField\$Key
transforms.hoistKey.field=$key_field
PROPS
  [ "$flatten" = 1 ] && printf '%s\n' 'transforms.flatten.type=org.apache.kafka.connect.transforms.Flatten$Value' 'transforms.flatten.delimiter=_'
  # An ISO-8601 string field becomes a Connect Timestamp, so it binds as a timestamp (the
  # unnest writer binds text[] otherwise, which Postgres refuses for a timestamptz column).
  [ -n "$ts_field" ] && printf '%s\n' 'transforms.ts.type=org.apache.kafka.connect.transforms.TimestampConverter$Value' \
    "transforms.ts.field=$ts_field" 'transforms.ts.target.type=Timestamp' "transforms.ts.format=yyyy-MM-dd'T'HH:mm:ssX"
  if [ "$best" = 1 ]; then
    echo "dialect.postgres.unnest.insert.enabled=true"
    echo "use.reduction.buffer=true"
  fi
  local kv; for kv in "${extra[@]}"; do echo "$kv"; done
}

# ---------------------------------------------------------------- main
cmd="${1:-}"; shift || true
case "$cmd" in
  fetch) fetch ;;
  source-db) source_db "$@" ;;
  start) start "$@" ;;
  stop) stop_sig "${1:?NAME}" TERM ;;
  kill) kill_worker "${1:?NAME}" ;;
  status) status "${1:?NAME}" ;;
  url) echo "http://127.0.0.1:$(rest_port "${1:?NAME}")" ;;
  pid) worker_pid "${1:?NAME}" ;;
  log) echo "$(state_of "${1:?NAME}")/connect.log" ;;
  clean) clean "${1:?NAME}" ;;
  source-props) source_props "$@" ;;
  mysql-source-props) mysql_source_props "$@" ;;
  fetch-avro-converter) fetch_avro_converter ;;   # opt-in
  jdbc-sink-props) jdbc_sink_props "$@" ;;
  lib) fetch; echo "$LIB" ;;
  plugins) fetch; echo "$PLUGINS" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
