#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet, with
# apt-get (through sudo when not root), and says what it did. `make setup` runs it
# for wrk (the benchmark's smoke test) and for the real node of tests/e2e and the
# image build (containerd, runc, containernetworking-plugins, nftables, buildah,
# mmdebstrap).
#
# A package with a pin in hack/versions.env (DEB_<NAME>, the name in capitals with
# - as _) is installed at that upstream version, any Debian revision (security
# updates keep the upstream version); where the archive has no such version, the
# archive's own is installed, with a log line. An installed package of another
# version is left alone, also with a log line. Elsewhere than on Debian or Ubuntu
# it says what to install and fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"
log() { echo "install-debs: $*" >&2; }

pin_of() { # package -> its pinned upstream version, or nothing
  local var
  var="DEB_$(tr 'a-z-' 'A-Z_' <<<"$1")"
  echo "${!var:-}"
}

missing=()
for package; do
  version=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$package" 2>/dev/null || true)
  pin=$(pin_of "$package")
  case $version in
    "ii "*)
      version=${version#ii }
      version=${version#*:} # no epoch
      if [ -n "$pin" ] && [[ $version != "$pin"[~+-]* ]]; then
        log "$package $version is installed, not $pin (hack/versions.env): using it"
      fi ;;
    *) missing+=("$package") ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  log "no apt-get here: install ${missing[*]} with your package manager"
  exit 1
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    log "not root and no sudo: run 'apt-get install -y ${missing[*]}' as root"
    exit 1
  fi
  as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
apt_install() {
  "${as_root[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
# A fresh machine may have no package lists yet: update only if the first try fails.
retry_after_update() {
  "$@" || { "${as_root[@]}" apt-get update -q >/dev/null && "$@"; }
}

wanted=()
for package in "${missing[@]}"; do
  pin=$(pin_of "$package")
  wanted+=("$package${pin:+=$pin*}")
done
log "installing ${wanted[*]} with apt-get"
if ! retry_after_update apt_install "${wanted[@]}" 2>/dev/null; then
  log "the pinned versions are not all in the archive; installing the archive's"
  retry_after_update apt_install "${missing[@]}"
fi
