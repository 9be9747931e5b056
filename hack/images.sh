#!/usr/bin/env bash
# Builds the product's images from the Dockerfile, with no container registry:
#
#   hack/images.sh [operator] [receiver] [pause]    # default: operator receiver
#
# and prints one line per image: "<name> <reference> <archive>", the archive
# being a docker-archive tar that `ctr images import`, `kind load image-archive`
# and `docker load` all read. References are localhost/mailtrap-webhook-<name>:$IMAGE_TAG
# (default "dev").
#
# With buildah (the default when it is installed; Debian's `buildah` and
# `mmdebstrap` packages, which `make setup` installs; run as root):
#   1. a Debian base image (python3, its venv module, CA certificates) made with
#      mmdebstrap from Debian's archive and committed with buildah: the only
#      thing the build needs that the Dockerfile's default base would pull;
#   2. the Dockerfile's target of each name, built with buildah, that base passed
#      as the PYTHON_IMAGE build argument; the host's CA bundle is mounted into
#      the build read-only, so pip trusts what the host trusts (such as the CA of
#      a TLS-intercepting proxy in front of PyPI).
#   pause: the real test node's sandbox image (tests/helpers/node.py), the static
#      binary hack/testbins.sh builds from hack/pause/pause.go, alone in an image.
# With IMAGE_BUILDER=docker (hack/kind-e2e.sh uses it): `docker build --target`
# of the same Dockerfile on its default base, then `docker save`.
#
# Everything is cached under ${XDG_CACHE_HOME:-~/.cache}/mailtrap-webhook/images:
# buildah's storage and layer cache, the base (made again only when its recipe
# below changes; delete base/ to take newer Debian packages), and the archives
# (written again only when the image changed).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${IMAGE_TAG:-dev}
builder=${IMAGE_BUILDER:-}
if [ -z "$builder" ]; then
  if command -v buildah >/dev/null; then builder=buildah; else builder=docker; fi
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/mailtrap-webhook/images"
mkdir -p "$cache/archives"

log() { echo "images: $*" >&2; }
names=(operator receiver)
[ $# -gt 0 ] && names=("$@")

# --- buildah ------------------------------------------------------------------------

# Its own storage, so nothing here touches (or depends on) the host's containers.
bh() { buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver overlay "$@"; }

suite=bookworm
packages=python3,python3-venv,python-is-python3,ca-certificates
debian_base() { # -> the base image's reference, made (and cached) when missing
  local recipe key ref tarball c
  # Documentation and translations are no use in an image: a third of the size.
  recipe="$suite $packages path-exclude=/usr/share/{doc,man,info,locale}/*"
  key=$(sha256sum <<<"$recipe" | cut -c1-12)
  ref="localhost/mailtrap-webhook-base:$suite-$key"
  tarball="$cache/base/$suite-$key.tar"
  if [ -f "$tarball" ] && bh inspect --type image "$ref" >/dev/null 2>&1; then
    echo "$ref"
    return 0
  fi
  if [ ! -f "$tarball" ]; then
    command -v mmdebstrap >/dev/null ||
      { log "mmdebstrap is not installed (apt-get install mmdebstrap; make setup does)"; return 1; }
    log "making the Debian $suite base with mmdebstrap (about a minute)"
    mkdir -p "$cache/base"
    local dir excludes=()
    for dir in doc man info locale; do
      excludes+=("--dpkgopt=path-exclude=/usr/share/$dir/*")
    done
    mmdebstrap --mode=root --variant=essential --format=tar --quiet \
      --include="$packages" "${excludes[@]}" "$suite" "$tarball.part" \
      "deb http://deb.debian.org/debian $suite main" \
      "deb http://deb.debian.org/debian $suite-updates main" \
      "deb http://deb.debian.org/debian-security $suite-security main" >&2
    mv "$tarball.part" "$tarball"
  fi
  c=$(bh from scratch)
  bh add "$c" "$tarball" / >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd python3 --label "org.opencontainers.image.description=Debian $suite with python3 ($recipe)" "$c"
  bh commit --quiet --rm "$c" "$ref" >/dev/null
  echo "$ref"
}

buildah_build() { # name ref -> builds the image
  local name=$1 ref=$2 base c mounts=() bundle=/etc/ssl/certs/ca-certificates.crt
  case $name in
    pause)
      local pause sum key=mailtrap-webhook.pause.sha256
      pause=$("$repo/hack/testbins.sh" pause)/pause
      sum=$(sha256sum <"$pause" | cut -d' ' -f1)
      # The same binary makes the same image: keep the one there is.
      [ "$(bh inspect --type image --format "{{index .ImageAnnotations \"$key\"}}" "$ref" 2>/dev/null)" = "$sum" ] &&
        return 0
      c=$(bh from scratch)
      bh copy "$c" "$pause" /pause >/dev/null
      bh config --entrypoint '["/pause"]' --user 65535:65535 --annotation "$key=$sum" "$c"
      bh commit --quiet --rm "$c" "$ref" >/dev/null ;;
    *)
      base=$(debian_base)
      [ -f "$bundle" ] && mounts=(--volume "$bundle:$bundle:ro")
      log "building $ref (target $name of the Dockerfile) on $base"
      bh bud --quiet --isolation chroot --network host --pull=never --layers \
        "${mounts[@]}" --build-arg "PYTHON_IMAGE=$base" --target "$name" --tag "$ref" \
        --file "$repo/Dockerfile" "$repo" >/dev/null ;;
  esac
}

buildah_save() { # ref archive -> the archive holds the image (written when it changed)
  local id
  id=$(bh inspect --type image --format '{{.FromImageID}}' "$1")
  [ -f "$2" ] && [ "$(cat "$2.id" 2>/dev/null)" = "$id" ] && return 0
  rm -f "$2"
  bh push --quiet "$1" "docker-archive:$2.part:$1" >/dev/null
  mv "$2.part" "$2"
  echo "$id" >"$2.id"
}

# --- docker ---------------------------------------------------------------------

docker_build() { # name ref
  if [ "$1" = pause ]; then
    log "the pause image is built with buildah only (it is for tests/helpers/node.py)"
    return 1
  fi
  log "building $2 (target $1 of the Dockerfile) with docker"
  docker build --quiet --target "$1" --tag "$2" "$repo" >/dev/null
}

docker_save() { rm -f "$2"; docker save --output "$2" "$1"; }

# ---------------------------------------------------------------------------------

case $builder in
  buildah | docker) ;;
  *) log "IMAGE_BUILDER must be buildah or docker, not $builder"; exit 1 ;;
esac
for name in "${names[@]}"; do
  case $name in
    operator | receiver | pause) ;;
    *) log "unknown image $name: operator, receiver or pause"; exit 1 ;;
  esac
  ref="localhost/mailtrap-webhook-$name:$tag"
  archive="$cache/archives/$builder-$name-$tag.tar"
  "${builder}_build" "$name" "$ref"
  "${builder}_save" "$ref" "$archive"
  echo "$name $ref $archive"
done
