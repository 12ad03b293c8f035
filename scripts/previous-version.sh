#!/usr/bin/env bash
# The previous version of this sink, for the rolling-upgrade test
# (tests/upgrade.rs): the binary built from a fixed earlier commit of this
# repository, cached under ~/.cache.
#
#   scripts/previous-version.sh build   # build it unless cached; prints its path
#   scripts/previous-version.sh path    # its path (exit 1 when not built)
#
# PREVIOUS_COMMIT is the last commit before the migrations
# 20261206000002_last_event and 20261206000003_numeric_positions, so the
# upgrade applies schema changes while the old replicas run. Its Cargo.lock
# is this one's: built in the same target directory, only this crate is
# compiled again (~15 s warm). Run `build` before building the current
# binary (scripts/test.sh does): both uplift to target/debug/kafka-pg-sink.
set -euo pipefail
cd "$(dirname "$0")/.."

PREVIOUS_COMMIT="${PREVIOUS_COMMIT:-6415d2f74f9e98e3a508ef45d4a91d27505ded9a}"
CACHE="${KPGS_CACHE:-$HOME/.cache/kafka-pg-sink}/previous/$PREVIOUS_COMMIT"
BIN="$CACHE/kafka-pg-sink"

log() { echo "[previous-version] $*" >&2; }

build() {
  if [ -x "$BIN" ]; then echo "$BIN"; return; fi
  if ! git cat-file -e "$PREVIOUS_COMMIT^{commit}" 2>/dev/null; then
    log "commit $PREVIOUS_COMMIT is not in this clone; fetching the full history"
    git fetch --quiet --unshallow 2>/dev/null || git fetch --quiet origin 2>/dev/null || true
    git cat-file -e "$PREVIOUS_COMMIT^{commit}" \
      || { log "commit $PREVIOUS_COMMIT is not available: the upgrade test needs this repository's history"; exit 1; }
  fi
  local t0=$SECONDS src
  src="$(mktemp -d "${TMPDIR:-/tmp}/kpgs-previous.XXXXXX")"
  git archive "$PREVIOUS_COMMIT" | tar -x -C "$src"
  log "building $PREVIOUS_COMMIT"
  local target="${CARGO_TARGET_DIR:-$PWD/target}"
  (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --locked --quiet --bin kafka-pg-sink) \
    || { rm -rf "$src"; log "build failed"; exit 1; }
  mkdir -p "$CACHE"
  cp "$target/debug/kafka-pg-sink" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  rm -rf "$src"
  log "built in $((SECONDS - t0)) s: $BIN"
  echo "$BIN"
}

case "${1:-}" in
  build) build ;;
  path) [ -x "$BIN" ] && echo "$BIN" || { log "not built: run scripts/previous-version.sh build"; exit 1; } ;;
  *) echo "usage: $0 build|path" >&2; exit 2 ;;
esac
