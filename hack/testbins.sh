#!/usr/bin/env bash
# Provides the test-only Kubernetes binaries that tests/cluster.py starts:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok
# and helm. Prints the directory that holds all of them.
#
# For each binary, in order:
#   1. $MAILTRAP_TESTBINS (a directory), then $KUBEBUILDER_ASSETS, then PATH;
#   2. the official release download a user with internet would get;
#   3. a build from the Go module proxy with the installed Go.
# Whatever is found or obtained is linked or stored under
# ${XDG_CACHE_HOME:-~/.cache}/mailtrap-webhook/testbins/<versions>/bin, so the
# second run costs nothing. Versions are pinned in hack/versions.env only.
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
mkdir -p "$bin"

log() { echo "testbins: $*" >&2; }

fetch() { # url dest: a quiet download that gives up quickly when offline
  curl -fsSL --connect-timeout 10 --retry 2 -o "$2" "$1"
}

skew_ok() { # name path -> 0 unless a Kubernetes binary is more than one minor off the pin
  case $1 in kube-apiserver | kube-controller-manager | kube-scheduler | kubectl) ;; *) return 0 ;; esac
  local want=${KUBERNETES_VERSION#v1.} have
  want=${want%%.*}
  have=$({ "$2" version --client 2>/dev/null || "$2" --version 2>/dev/null; } | grep -oE 'v1\.[0-9]+' | head -1)
  have=${have#v1.}
  [ -n "$have" ] && [ $((have - want)) -le 1 ] && [ $((want - have)) -le 1 ] && return 0
  log "ignoring $2 (v1.${have:-?}): more than one minor away from ${KUBERNETES_VERSION}"
  return 1
}

find_existing() { # name -> path or nothing
  local name=$1 dir path
  for dir in "${MAILTRAP_TESTBINS:-}" "${KUBEBUILDER_ASSETS:-}"; do
    if [ -n "$dir" ] && [ -x "$dir/$name" ]; then echo "$dir/$name"; return; fi
  done
  path=$(command -v "$name" 2>/dev/null) || return 0
  skew_ok "$name" "$path" && echo "$path"
  return 0
}

download() { # name -> 0 when the official release landed in $bin
  local name=$1 tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  case $name in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl)
      local url="https://dl.k8s.io/release/${KUBERNETES_VERSION}/bin/linux/${arch}/${name}"
      fetch "$url" "$tmp/$name" && fetch "$url.sha256" "$tmp/sum" &&
        echo "$(cat "$tmp/sum")  $tmp/$name" | sha256sum -c --quiet - || return 1 ;;
    etcd)
      local base="etcd-${ETCD_VERSION}-linux-${arch}"
      fetch "https://github.com/etcd-io/etcd/releases/download/${ETCD_VERSION}/${base}.tar.gz" "$tmp/e.tgz" &&
        tar -xzf "$tmp/e.tgz" -C "$tmp" "$base/etcd" && mv "$tmp/$base/etcd" "$tmp/etcd" || return 1 ;;
    kwok)
      fetch "https://github.com/kubernetes-sigs/kwok/releases/download/${KWOK_VERSION}/kwok-linux-${arch}" "$tmp/kwok" || return 1 ;;
    helm)
      fetch "https://get.helm.sh/helm-${HELM_VERSION}-linux-${arch}.tar.gz" "$tmp/h.tgz" &&
        tar -xzf "$tmp/h.tgz" -C "$tmp" "linux-${arch}/helm" && mv "$tmp/linux-${arch}/helm" "$tmp/helm" || return 1 ;;
  esac
  chmod +x "$tmp/$name" && mv "$tmp/$name" "$bin/$name"
}

kube_module() { # writes a wrapper module: k8s.io/kubernetes replaces its staging modules with local paths
  local dir="$cache/src/kubernetes" minor="v0.${KUBERNETES_VERSION#v1.}"
  mkdir -p "$dir"
  if [ ! -f "$dir/go.sum" ]; then
    log "resolving k8s.io/kubernetes ${KUBERNETES_VERSION} (staging modules at ${minor})"
    local staging
    staging=$(curl -fsSL "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/${KUBERNETES_VERSION}.mod" |
      sed -n '/^replace (/,/^)/p' | awk '/=> \.\/staging/ {print $1}')
    {
      echo "module mailtrap-webhook/testbins/kubernetes"
      echo "go 1.26"
      echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
      for m in $staging; do echo "replace $m => $m ${minor}"; done
    } >"$dir/go.mod"
    (cd "$dir" && go mod download k8s.io/kubernetes &&
      go get "k8s.io/kubernetes/cmd/kube-apiserver@${KUBERNETES_VERSION}" \
        "k8s.io/kubernetes/cmd/kube-controller-manager@${KUBERNETES_VERSION}" \
        "k8s.io/kubernetes/cmd/kube-scheduler@${KUBERNETES_VERSION}" \
        "k8s.io/kubernetes/cmd/kubectl@${KUBERNETES_VERSION}")
  fi
  echo "$dir"
}

build() { # name -> 0 when a from-source build landed in $bin
  local name=$1 dir
  log "building $name from the Go module proxy (slow the first time; cached after)"
  case $name in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl)
      dir=$(kube_module)
      # Stamp the version as the release build does: the API server reports it at
      # /version, and kubectl and helm compare against it.
      local minor=${KUBERNETES_VERSION#v1.} flags="-s -w" pkg
      minor=${minor%%.*}
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
      done
      (cd "$dir" && go build -trimpath -ldflags="$flags" -o "$bin/$name" "k8s.io/kubernetes/cmd/$name") ;;
    etcd)
      dir="$cache/src/etcd"
      mkdir -p "$dir"
      # etcd's own main module uses local replace directives; its server module
      # does not, so a three-line main around etcdmain builds the same server.
      printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >"$dir/main.go"
      [ -f "$dir/go.mod" ] || (cd "$dir" && go mod init mailtrap-webhook/testbins/etcd >/dev/null 2>&1 &&
        go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" && go mod tidy)
      (cd "$dir" && go build -trimpath -ldflags="-s -w" -o "$bin/etcd" .) ;;
    kwok)
      GOBIN="$bin" go install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" ;;
    helm)
      # The flags of helm's own release build: its version, and the Kubernetes
      # version `helm template` and `helm lint` assume when no cluster is asked.
      local kminor pkg flags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
      kminor=$(curl -fsSL "$(go env GOPROXY | cut -d, -f1)/helm.sh/helm/v3/@v/${HELM_VERSION}.mod" |
        awk '$1 == "k8s.io/client-go" {print $2}' | cut -d. -f2)
      for pkg in pkg/lint/rules pkg/chartutil; do
        flags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=${kminor}"
      done
      GOBIN="$bin" go install -trimpath -ldflags="$flags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" ;;
  esac
}

names=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
[ $# -gt 0 ] && names=("$@")
for name in "${names[@]}"; do
  if [ -x "$bin/$name" ] && [ ! -L "$bin/$name" ]; then continue; fi
  existing=$(find_existing "$name")
  if [ -n "$existing" ] && [ "$existing" != "$bin/$name" ]; then
    ln -sfn "$existing" "$bin/$name"
    continue
  fi
  rm -f "$bin/$name"
  download "$name" 2>/dev/null && { log "$name: official release"; continue; }
  build "$name" || { log "$name: could not be downloaded or built"; exit 1; }
done
echo "$bin"
