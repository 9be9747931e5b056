#!/usr/bin/env bash
# Installs wrk, the HTTP load generator bench/receiver_durable.py drives (its smoke
# test runs in `make test`), with apt-get: Debian and Ubuntu package it. Through
# sudo when not root. Elsewhere it says what to do instead.
set -euo pipefail

command -v wrk >/dev/null && exit 0
log() { echo "install-wrk: $*" >&2; }

if ! command -v apt-get >/dev/null; then
  log "no apt-get here: install wrk with your package manager (https://github.com/wg/wrk)"
  exit 1
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    log "not root and no sudo: run 'apt-get install -y wrk' as root"
    exit 1
  fi
  as_root=(sudo)
fi
log "installing wrk with apt-get"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet: update only if the first try fails.
"${as_root[@]}" apt-get install -y -q wrk >/dev/null ||
  { "${as_root[@]}" apt-get update -q >/dev/null && "${as_root[@]}" apt-get install -y -q wrk >/dev/null; }
