#!/usr/bin/env bash
# Static validation of the deployment files without a Docker engine:
# docker-compose.yml through the compose client (installed from Debian if no
# client is present). The compose-vs-binary consistency checks are in
# tests/deploy.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@";
  elif command -v docker-compose >/dev/null; then docker-compose "$@";
  else return 127; fi
}

if ! compose version >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && SUDO=sudo
  echo "[deploy] installing a compose client (Debian docker-compose) for validation" >&2
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-compose >/dev/null; } \
    || { echo "[deploy] no compose client available; skipping compose validation" >&2; exit 0; }
fi
compose -f docker-compose.yml config -q
echo "[deploy] docker-compose.yml is valid ($(compose version --short 2>/dev/null || compose version | head -1))"
