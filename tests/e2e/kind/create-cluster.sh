#!/usr/bin/env bash
# End-to-end proof that a real kind cluster comes up with the offline node image, using the
# product's kind config unchanged, and that a locally built image runs and is reachable.
#
#   tests/e2e/kind/create-cluster.sh [--name NAME] [--keep]
#
# Steps: install kind (pinned) -> build/reuse the node image -> kind create cluster (through the
# test-only docker wrapper in tests/e2e/kind/bin) -> node Ready + kube-system pods Running ->
# busybox httpd image built FROM scratch, `kind load image-archive`, Deployment + Service ->
# pod Ready, kubectl port-forward, pod->ClusterIP and DNS checks -> kind delete cluster
# (unless --keep) and check that no node containers are left.
# Env: DEVLOOP_CACHE (default ~/.cache/devloop-e2e).
set -euo pipefail
# One brace group: bash parses the whole script before running it, so editing this file while
# it runs cannot corrupt the running instance.
{

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$HERE/../../.." && pwd -P)"
CACHE="${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}"
NAME=devloop-kind-check
CREATED=0
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--name NAME] [--keep]" >&2; exit 2 ;;
  esac
done

T0=$(date +%s)
log() { echo "[create-cluster $(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

KIND="$("$HERE/install-kind.sh")"
NODE_IMAGE="$("$HERE/build-node-image.sh")"
KUBECTL="$CACHE/bin/kubectl"; [ -x "$KUBECTL" ] || KUBECTL=kubectl
CTX="kind-$NAME"
k() { "$KUBECTL" --context "$CTX" "$@"; }
kind_() { PATH="$HERE/bin:$PATH" "$KIND" "$@"; }

WORK="$(mktemp -d)"
PF_PID=""
APP_IMAGE="devloop-test/e2e-busybox-httpd:$$"
cleanup() {
  local rc=$?
  [ -z "$PF_PID" ] || kill "$PF_PID" 2>/dev/null || true
  docker rmi "$APP_IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [ $rc != 0 ] && [ "$CREATED" = 1 ]; then
    log "failure: diagnostics"
    k get nodes -o wide >&2 2>&1 || true
    k get pods -A -o wide >&2 2>&1 || true
    docker exec "$NAME-control-plane" journalctl -u kubelet --no-pager 2>/dev/null | tail -40 >&2 || true
  fi
  if [ "$CREATED" = 0 ]; then
    :   # never delete a cluster this run did not create
  elif [ "$KEEP" = 0 ]; then
    log "deleting cluster $NAME"
    kind_ delete cluster --name "$NAME" >&2 || true
    left="$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$NAME")"
    if [ -n "$left" ]; then log "ERROR: containers left behind: $left"; rc=1
    else log "no kind containers left for $NAME"; fi
  else
    log "cluster kept: kubectl --context $CTX ...; delete with: PATH=$HERE/bin:\$PATH $KIND delete cluster --name $NAME"
  fi
  exit $rc
}
trap cleanup EXIT

# ---- cluster ---------------------------------------------------------------------------------
if "$KIND" get clusters 2>/dev/null | grep -qx "$NAME"; then
  die "a kind cluster named $NAME already exists (delete it or use --name)"
fi
log "kind create cluster --name $NAME --image $NODE_IMAGE --config $REPO/kind-config.yaml"
t=$(date +%s)
# (on failure kind removes the nodes it started itself)
kind_ create cluster --config "$REPO/kind-config.yaml" --image "$NODE_IMAGE" --name "$NAME" >&2
CREATED=1
log "cluster created in $(( $(date +%s) - t ))s"

k get nodes -o wide >&2
k wait --for=condition=Ready node --all --timeout=180s >&2 || die "node not Ready"
log "node Ready"
for comp in etcd kube-apiserver kube-controller-manager kube-scheduler; do
  k -n kube-system wait --for=condition=Ready pod -l "component=$comp" --timeout=180s >/dev/null || die "$comp not Ready"
done
k -n kube-system wait --for=condition=Ready pod -l k8s-app=kube-proxy --timeout=180s >/dev/null || die "kube-proxy not Ready"
k -n kube-system wait --for=condition=Ready pod -l k8s-app=kube-dns --timeout=180s >/dev/null || die "coredns not Ready"
k get pods -A -o wide >&2
notrunning="$(k get pods -A --no-headers | awk '$4 != "Running"')"
[ -z "$notrunning" ] || die "pods not Running: $notrunning"
log "system pods Running (etcd, apiserver, controller-manager, scheduler, kube-proxy, coredns)"

# ---- workload: busybox httpd image built locally, loaded with kind load image-archive ------------
BB="$CACHE/busybox/busybox"
if [ ! -x "$BB" ]; then
  mkdir -p "$CACHE/busybox"
  (cd "$WORK" && { apt-get download busybox-static >/dev/null 2>&1 || { apt-get update -qq && apt-get download busybox-static >/dev/null; }; } \
     && dpkg-deb -x busybox-static_*.deb x && install -m 0755 x/bin/busybox "$BB")
fi
mkdir -p "$WORK/app/www"
cp "$BB" "$WORK/app/busybox"
echo "hello from devloop e2e" >"$WORK/app/www/index.html"
cat >"$WORK/app/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
COPY www /www
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/www"]
EOF
docker build -q -t "$APP_IMAGE" "$WORK/app" >/dev/null 2>"$WORK/build.err" || { cat "$WORK/build.err" >&2; die "docker build of the test image failed"; }
docker save -o "$WORK/app.tar" "$APP_IMAGE"
t=$(date +%s)
kind_ load image-archive "$WORK/app.tar" --name "$NAME" >&2
log "kind load image-archive: $(( $(date +%s) - t ))s"

k apply -f - >&2 <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: $APP_IMAGE
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
k rollout status deploy/web --timeout=120s >&2 || die "deployment web not Ready"
log "pod Ready: $(k get pods -l app=web -o jsonpath='{.items[0].metadata.name} {.items[0].status.podIP}')"

# port-forward from the host
PORT=$(( 20000 + RANDOM % 20000 ))
k port-forward deploy/web "$PORT:8080" >"$WORK/pf.log" 2>&1 &
PF_PID=$!
body=""
for _ in $(seq 50); do body="$(curl -fsS "http://127.0.0.1:$PORT/" 2>/dev/null)" && break; sleep 0.2; done
[ "$body" = "hello from devloop e2e" ] || { cat "$WORK/pf.log" >&2; die "port-forward: got '$body'"; }
kill "$PF_PID"; PF_PID=""
log "port-forward OK: '$body'"

# pod -> ClusterIP (kube-proxy) and DNS (coredns)
CIP="$(k get svc web -o jsonpath='{.spec.clusterIP}')"
k run netcheck --image="$APP_IMAGE" --image-pull-policy=IfNotPresent --restart=Never --command -- \
  /bin/sh -c "set -e; nslookup web.default.svc.cluster.local; echo CLUSTERIP:\$(wget -qO- http://$CIP/); echo DNS:\$(wget -qO- http://web/)" >&2
k wait --for=jsonpath='{.status.phase}'=Succeeded pod/netcheck --timeout=120s >&2 || { k logs netcheck >&2 || true; die "netcheck pod failed"; }
out="$(k logs netcheck)"; echo "$out" >&2
grep -qx "CLUSTERIP:hello from devloop e2e" <<<"$out" || die "pod -> ClusterIP $CIP failed"
grep -qx "DNS:hello from devloop e2e" <<<"$out" || die "pod -> http://web (DNS) failed"
log "pod -> ClusterIP $CIP OK; DNS web.default.svc.cluster.local OK"
log "ALL CHECKS PASSED"
exit 0
}
