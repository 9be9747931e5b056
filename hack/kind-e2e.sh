#!/usr/bin/env bash
# End to end on a real cluster: kind (Kubernetes in Docker), the image built from
# this checkout, the Helm chart, examples/basic.yaml, and a signed event sent
# through a port-forward that must reach a target Pod.
#
#   hack/kind-e2e.sh          # needs docker (a running engine) and kind
#
# Steps: create a kind cluster; build the operator and receiver images with
# hack/images.sh (docker build of the Dockerfile's two targets; IMAGE_BUILDER=buildah
# builds them without a registry instead) and kind load both; helm install the chart
# with them; deploy tests/e2e/echo-target.yaml (the receiver image running a few
# lines of Python: no other image to pull) as the Service examples/basic.yaml
# sends bounces to; apply the example; wait for Ready; port-forward to the
# receiver's Service; check that a badly signed request gets 401; send a signed
# bounce with `mailtrap-receiver send-test`; wait until the target printed it.
# The cluster is deleted at the end, pass or fail (KEEP_CLUSTER=1 keeps it). A
# cluster of that name that already exists is the user's: the script stops
# rather than use or delete it.
#
# Environment: KIND (the kind binary), KIND_CLUSTER (name), KIND_NODE_IMAGE,
# KEEP_CLUSTER, PYTHON (a Python with this project installed; default .venv),
# IMAGE_BUILDER (docker by default here; see hack/images.sh).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

kind=${KIND:-kind}
cluster=${KIND_CLUSTER:-mailtrap-e2e}
python=${PYTHON:-$repo/.venv/bin/python}
release=mailtrap
system=mailtrap-system
apps=e2e

log() { echo "e2e: $*"; }
bin=$(hack/testbins.sh kubectl helm)
work=$(mktemp -d)
export KUBECONFIG="$work/kubeconfig"
kubectl() { "$bin/kubectl" "$@"; }
helm() { "$bin/helm" "$@"; }
forward_pid=""
created=""

diagnose() {
  log "failed; what the cluster says:"
  kubectl get all,mtwh -A -o wide || true
  kubectl -n "$apps" describe mtwh || true
  kubectl -n "$system" logs "deploy/$release-mailtrap-webhook-operator" --tail=100 || true
  kubectl -n "$apps" logs deploy/transactional-receiver --tail=100 || true
  kubectl -n "$apps" logs deploy/suppression-api --tail=100 || true
}

cleanup() {
  local code=$?
  [ "$code" -eq 0 ] || [ -z "$created" ] || diagnose
  [ -z "$forward_pid" ] || kill "$forward_pid" 2>/dev/null || true
  # Only a cluster this run created is deleted, never one that was there before.
  if [ -n "$created" ] && [ -z "${KEEP_CLUSTER:-}" ]; then
    "$kind" delete cluster --name "$cluster" >/dev/null 2>&1 || true
  elif [ -n "$created" ]; then
    log "kept cluster $cluster (KUBECONFIG=$work/kubeconfig)"
  fi
  [ -n "$created" ] && [ -n "${KEEP_CLUSTER:-}" ] || rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT

# If kind cannot even list its clusters, stop here (set -e) with created still empty.
clusters=$("$kind" get clusters)
if grep -qxF "$cluster" <<<"$clusters"; then
  log "a kind cluster named $cluster already exists; delete it or set KIND_CLUSTER to another name"
  exit 1
fi
log "creating kind cluster $cluster"
# Set before `create`: a create that fails half-way leaves nodes this run must remove.
created=1
"$kind" create cluster --name "$cluster" --kubeconfig "$KUBECONFIG" --wait 180s \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}

log "building the operator and receiver images and loading them into the cluster"
# tests/e2e/echo-target.yaml names the receiver image with the default tag, dev.
images=$(IMAGE_BUILDER=${IMAGE_BUILDER:-docker} IMAGE_TAG=dev hack/images.sh operator receiver)
while read -r name ref archive; do
  "$kind" load image-archive "$archive" --name "$cluster"
  case $name in
    operator) operator_image=$ref ;;
    receiver) receiver_image=$ref ;;
  esac
done <<<"$images"

log "installing the chart"
helm install "$release" charts/mailtrap-webhook-operator \
  --namespace "$system" --create-namespace \
  --set image.repository="${operator_image%:*}" --set-string image.tag="${operator_image##*:}" \
  --set image.pullPolicy=Never --set receiver.image.repository="${receiver_image%:*}" \
  --wait --timeout 300s

log "deploying the echo target and examples/basic.yaml"
kubectl create namespace "$apps"
kubectl -n "$apps" apply -f tests/e2e/echo-target.yaml
kubectl -n "$apps" apply -f examples/basic.yaml
kubectl -n "$apps" rollout status deploy/suppression-api --timeout=180s
kubectl -n "$apps" wait --for=condition=Ready mtwh/transactional --timeout=300s
kubectl -n "$apps" get mtwh -o wide

# The example's placeholder signing secret, as Mailtrap's webhook page would show it.
kubectl -n "$apps" get secret mailtrap-signing -o jsonpath='{.data.signing-secret}' |
  "$python" -c 'import base64, sys; sys.stdout.write(base64.b64decode(sys.stdin.read()).decode())' \
    >"$work/secret.txt"

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
kubectl -n "$apps" port-forward svc/transactional-receiver "$port:80" >"$work/port-forward.log" 2>&1 &
forward_pid=$!
url="http://127.0.0.1:$port/webhooks/mailtrap"
answered=""
for _ in $(seq 60); do
  "$python" - "$url" <<'PY' && { answered=1; break; }
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b"{}", method="POST"), timeout=2)
except urllib.error.HTTPError:
    sys.exit(0)  # the receiver answered
except OSError:
    sys.exit(1)
PY
  sleep 1
done
if [ -z "$answered" ]; then
  log "the receiver did not answer through the port-forward within 60 s; kubectl port-forward said:"
  cat "$work/port-forward.log"
  exit 1
fi

log "a request with a wrong signature must get 401"
"$python" - "$url" <<'PY'
import sys, urllib.request, urllib.error
request = urllib.request.Request(
    sys.argv[1], data=b'{"events": []}', method="POST",
    headers={"Content-Type": "application/json", "Mailtrap-Signature": "0" * 64},
)
try:
    urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as error:
    assert error.code == 401, error.code
else:
    raise SystemExit("a badly signed request was accepted")
PY

log "sending a signed bounce"
"$python" -m mailtrap_receiver send-test --url "$url" --secret-file "$work/secret.txt" --event bounce

for _ in $(seq 60); do
  if kubectl -n "$apps" logs deploy/suppression-api | grep '"event": "bounce"' >"$work/got.txt"; then
    log "the target got: $(head -1 "$work/got.txt")"
    exit 0
  fi
  sleep 2
done
log "the target got nothing"
exit 1
