#!/usr/bin/env bash
# Install the Debian packages edgeopt's tests and backends need, only those missing.
# Usage: scripts/system-deps.sh PKG...   (no-op for packages already installed; skips without apt/root)
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "edgeopt: missing system packages ${missing[*]} and no apt-get here; install them by hand" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "edgeopt: installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
