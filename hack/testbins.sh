#!/usr/bin/env bash
# Provides the test-only binaries that tests/helpers/cluster.py and
# tests/helpers/node.py start: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok and helm for the control plane; kubelet,
# kube-proxy and pause (the sandbox process of the real node's pause image, built
# from hack/pause/pause.go) for the real node of tests/e2e; oci-registry (an
# in-memory OCI registry, go-containerregistry's) that the chart is pushed to and
# installed from; kubeconform, which checks every manifest against Kubernetes'
# schemas. Prints the directory that holds all of them; names given as arguments
# limit it to those.
#
# For each binary, the first of:
#   1. $MAILTRAP_TESTBINS (a directory), then $KUBEBUILDER_ASSETS, then PATH, if
#      its version fits hack/versions.env: for the Kubernetes binaries the pinned
#      minor or one either side (Kubernetes' skew policy), for etcd, kwok and helm
#      the pinned major.minor. A binary that does not fit is skipped, with a log line;
#   2. the official release download a user with internet would get;
#   3. a build from the Go module proxy with the installed Go.
# pause, oci-registry and kubeconform are always built (the first two have no release
# binaries), the last two again whenever their pin changes: a build from the module
# proxy cannot tell its own version.
# Downloads and builds are kept in ${XDG_CACHE_HOME:-~/.cache}/mailtrap-webhook/
# testbins/<versions>/obtained, so the second run costs nothing. The printed
# directory, bin/ next to it, links each name to the binary chosen this run.
# Versions are pinned in hack/versions.env only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "testbins: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

cache="${XDG_CACHE_HOME:-$HOME/.cache}/mailtrap-webhook/testbins/k8s-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}-helm-${HELM_VERSION}"
bin="$cache/bin"
obtained="$cache/obtained"
mkdir -p "$bin" "$obtained"

log() { echo "testbins: $*" >&2; }

need() { # tools... -> 0 when all are installed; otherwise says which is missing
  local tool
  for tool; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; return 1; }
  done
}

fetch() { # url dest ("-": stdout): a download that gives up quickly when offline
  if command -v curl >/dev/null; then
    curl -fsSL --connect-timeout 10 --retry 2 -o "$2" "$1"
  elif command -v wget >/dev/null; then
    wget -nv --timeout=10 --tries=3 -O "$2" "$1"
  else
    echo "neither curl nor wget is installed" >&2
    return 1
  fi
}

goproxy() { # the module proxy to read .mod files from; "direct" or "off" are not URLs
  local proxy
  proxy=$(go env GOPROXY | cut -d, -f1)
  case $proxy in http*) echo "$proxy" ;; *) echo https://proxy.golang.org ;; esac
}

version_fits() { # name path -> 0 when the binary's version is one hack/versions.env allows
  local name=$1 pin out have want
  case $name in
    etcd) pin=$ETCD_VERSION ;;
    kwok) pin=$KWOK_VERSION ;;
    helm) pin=$HELM_VERSION ;;
    *) pin=$KUBERNETES_VERSION ;;
  esac
  pin=$(grep -oE '[0-9]+\.[0-9]+' <<<"$pin" | head -1)
  case $name in
    pause | oci-registry | kubeconform) return 1 ;; # only our own build
    kubectl) out=$(timeout 20 "$2" version --client 2>/dev/null) || true ;;
    helm) out=$(timeout 20 "$2" version --short 2>/dev/null) || true ;;
    *) out=$(timeout 20 "$2" --version 2>/dev/null) || true ;;
  esac
  have=$(grep -oE '[0-9]+\.[0-9]+' <<<"$out" | head -1) || true
  case $name in
    etcd | kwok | helm)
      want="v$pin.x"
      [ "$have" = "$pin" ] && return 0 ;;
    *)
      want="v${pin%.*}.$((${pin#*.} - 1)) to v${pin%.*}.$((${pin#*.} + 1))"
      if [ "${have%.*}" = "${pin%.*}" ]; then
        local skew=$((${have#*.} - ${pin#*.}))
        [ "${skew#-}" -le 1 ] && return 0
      fi ;;
  esac
  log "ignoring $2 (${have:+v}${have:-version unknown}): $name must be $want (hack/versions.env)"
  return 1
}

find_existing() { # name -> a fitting binary from the two directories or PATH, or nothing
  local name=$1 path candidates=()
  [ -z "${MAILTRAP_TESTBINS:-}" ] || candidates+=("$MAILTRAP_TESTBINS/$name")
  [ -z "${KUBEBUILDER_ASSETS:-}" ] || candidates+=("$KUBEBUILDER_ASSETS/$name")
  path=$(command -v "$name") && candidates+=("$path")
  for path in "${candidates[@]}"; do
    [ -x "$path" ] || continue
    # Our own links (bin/ may be on PATH) are not a source.
    case $(readlink -f "$path") in "$cache"/*) continue ;; esac
    if version_fits "$name" "$path"; then echo "$path"; return 0; fi
  done
  return 0
}

download() { # name dir -> 0 when the official release landed in dir
  local name=$1 out=$2
  case $name in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl | kubelet | kube-proxy)
      need sha256sum || return 1
      local url="https://dl.k8s.io/release/${KUBERNETES_VERSION}/bin/linux/${arch}/${name}"
      fetch "$url" "$out/$name.part" && fetch "$url.sha256" "$out/sum" || return 1
      echo "$(cat "$out/sum")  $out/$name.part" | sha256sum -c --quiet - >/dev/null ||
        { echo "the download does not match $url.sha256" >&2; return 1; }
      mv "$out/$name.part" "$out/$name" ;;
    etcd)
      need tar || return 1
      local base="etcd-${ETCD_VERSION}-linux-${arch}"
      fetch "https://github.com/etcd-io/etcd/releases/download/${ETCD_VERSION}/${base}.tar.gz" "$out/e.tgz" &&
        tar -xzf "$out/e.tgz" -C "$out" "$base/etcd" && mv "$out/$base/etcd" "$out/etcd" || return 1 ;;
    kwok)
      fetch "https://github.com/kubernetes-sigs/kwok/releases/download/${KWOK_VERSION}/kwok-linux-${arch}" "$out/kwok" || return 1 ;;
    helm)
      need tar || return 1
      fetch "https://get.helm.sh/helm-${HELM_VERSION}-linux-${arch}.tar.gz" "$out/h.tgz" &&
        tar -xzf "$out/h.tgz" -C "$out" "linux-${arch}/helm" && mv "$out/linux-${arch}/helm" "$out/helm" || return 1 ;;
    pause | oci-registry | kubeconform)
      echo "built from source here" >&2
      return 1 ;;
  esac
  chmod +x "$out/$name"
}

resolve() { # dir function -> runs the function in dir once; a marker written last
  # records success, so an interrupted `go get` (go.mod and go.sum already there)
  # is resolved again instead of passing for done. The marker holds the function's
  # text: a recipe that changed (another command to build) resolves again.
  local dir=$1 recipe
  recipe=$(declare -f "$2")
  [ "$(cat "$dir/.resolved" 2>/dev/null)" = "$recipe" ] && return 0
  mkdir -p "$dir" && (cd "$dir" && "$2") && echo "$recipe" >"$dir/.resolved"
}

kube_get() { # in the wrapper module's directory: k8s.io/kubernetes replaces its
  # staging modules with local paths, so the wrapper pins them to the same release.
  local minor="v0.${KUBERNETES_VERSION#v1.}" staging m
  log "resolving k8s.io/kubernetes ${KUBERNETES_VERSION} (staging modules at ${minor})"
  staging=$(fetch "$(goproxy)/k8s.io/kubernetes/@v/${KUBERNETES_VERSION}.mod" - |
    sed -n '/^replace (/,/^)/p' | awk '/=> \.\/staging/ {print $1}') && [ -n "$staging" ] || return 1
  {
    echo "module mailtrap-webhook/testbins/kubernetes"
    echo "go 1.26"
    echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
    for m in $staging; do echo "replace $m => $m ${minor}"; done
  } >go.mod || return 1
  go mod download k8s.io/kubernetes &&
    go get "k8s.io/kubernetes/cmd/kube-apiserver@${KUBERNETES_VERSION}" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@${KUBERNETES_VERSION}" \
      "k8s.io/kubernetes/cmd/kube-scheduler@${KUBERNETES_VERSION}" \
      "k8s.io/kubernetes/cmd/kubectl@${KUBERNETES_VERSION}" \
      "k8s.io/kubernetes/cmd/kubelet@${KUBERNETES_VERSION}" \
      "k8s.io/kubernetes/cmd/kube-proxy@${KUBERNETES_VERSION}"
}

etcd_get() { # in its directory: etcd's own main module uses local replace directives;
  # its server module does not, so a three-line main around etcdmain builds the same server.
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >main.go
  printf 'module mailtrap-webhook/testbins/etcd\n\ngo 1.26\n' >go.mod
  go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" && go mod tidy
}

build() { # name dir -> 0 when a from-source build landed in dir
  local name=$1 out=$2
  if ! command -v go >/dev/null; then
    log "$name: Go is not installed, so it cannot be built: install Go 1.26 or later" \
      "(https://go.dev/dl/), or set MAILTRAP_TESTBINS to a directory holding $name"
    return 1
  fi
  log "building $name from the Go module proxy (slow the first time; cached after)"
  case $name in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl | kubelet | kube-proxy)
      resolve "$cache/src/kubernetes" kube_get || return 1
      # Stamp the version as the release build does: the API server reports it at
      # /version, and kubectl and helm compare against it.
      local minor=${KUBERNETES_VERSION#v1.} flags="-s -w" pkg
      minor=${minor%%.*}
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
      done
      (cd "$cache/src/kubernetes" && go build -trimpath -ldflags="$flags" -o "$out/$name" "k8s.io/kubernetes/cmd/$name") ;;
    etcd)
      resolve "$cache/src/etcd" etcd_get || return 1
      (cd "$cache/src/etcd" && go build -trimpath -ldflags="-s -w" -o "$out/etcd" .) ;;
    kwok)
      GOBIN="$out" go install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" ;;
    helm)
      # The flags of helm's own release build: its version, and the Kubernetes
      # version `helm template` and `helm lint` assume when no cluster is asked.
      local kminor pkg flags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
      kminor=$(fetch "$(goproxy)/helm.sh/helm/v3/@v/${HELM_VERSION}.mod" - |
        awk '$1 == "k8s.io/client-go" {print $2}' | cut -d. -f2) && [ -n "$kminor" ] || return 1
      for pkg in pkg/lint/rules pkg/chartutil; do
        flags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=${kminor}"
      done
      GOBIN="$out" go install -trimpath -ldflags="$flags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" ;;
    pause)
      # Static, so the image holds this one file and nothing else.
      CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$out/pause" "$here/pause/pause.go" ;;
    oci-registry)
      GOBIN="$out" go install -trimpath -ldflags="-s -w" \
        "github.com/google/go-containerregistry/cmd/registry@${GGCR_VERSION}" &&
        mv "$out/registry" "$out/oci-registry" ;;
    kubeconform)
      GOBIN="$out" go install -trimpath -ldflags="-s -w" \
        "github.com/yannh/kubeconform/cmd/kubeconform@${KUBECONFORM_VERSION}" ;;
  esac
}

obtain() { # name -> obtained/<name>, downloaded or else built
  local name=$1 out why
  # Work next to obtained/ so the final mv is a rename: an interrupted run never
  # leaves a partial binary that a later run would take for a finished one.
  out=$(mktemp -d "$cache/tmp.XXXXXX")
  if why=$(download "$name" "$out" 2>&1); then
    log "$name: official release downloaded"
  else
    why=${why##*$'\n'}
    log "$name: download failed (${why:-no reason given}); building it instead"
    if ! build "$name" "$out" || [ ! -x "$out/$name" ]; then
      rm -rf "$out"
      log "$name: could not be downloaded or built (see above): install what is missing," \
        "or set MAILTRAP_TESTBINS to a directory holding $name"
      exit 1
    fi
  fi
  mv "$out/$name" "$obtained/$name"
  rm -rf "$out"
}

pinned() { # name -> the pin of a binary that cannot tell its version (else nothing)
  case $1 in
    oci-registry) echo "$GGCR_VERSION" ;;
    kubeconform) echo "$KUBECONFORM_VERSION" ;;
  esac
}

link() { # name target -> bin/<name> points at target, replaced in one rename
  [ "$(readlink "$bin/$1" || true)" = "$2" ] && return 0
  ln -sfn "$2" "$bin/.$1.link"
  mv -Tf "$bin/.$1.link" "$bin/$1"
}

names=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm kubelet kube-proxy pause oci-registry kubeconform)
[ $# -gt 0 ] && names=("$@")
for name in "${names[@]}"; do
  # Earlier versions of this script kept downloads and builds in bin/ itself.
  if [ -f "$bin/$name" ] && [ ! -L "$bin/$name" ] && [ ! -e "$obtained/$name" ]; then
    ln "$bin/$name" "$obtained/$name"
  fi
  # pause is built from this checkout: an edited hack/pause/pause.go builds again.
  if [ "$name" = pause ] && [ "$here/pause/pause.go" -nt "$obtained/pause" ]; then
    rm -f "$obtained/pause"
  fi
  pin=$(pinned "$name")
  if [ -n "$pin" ] && [ "$(cat "$obtained/.$name.version" 2>/dev/null)" != "$pin" ]; then
    rm -f "$obtained/$name"
  fi
  existing=$(find_existing "$name")
  if [ -z "$existing" ]; then
    if [ ! -x "$obtained/$name" ]; then
      obtain "$name"
      [ -z "$pin" ] || echo "$pin" >"$obtained/.$name.version"
    fi
    existing="$obtained/$name"
  fi
  link "$name" "$existing"
done
echo "$bin"
