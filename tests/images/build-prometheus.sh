#!/usr/bin/env bash
# Build a Prometheus server image (a stand-in for the official `prom/prometheus:v2.53.4`, devloop's default
# monitoring.image) from upstream source through the Go module proxy, for machines with no container registry
# access (nothing can be pulled, no GitHub downloads). devloop's monitoring section runs it in the kind cluster:
#   kind load docker-image devloop-test/prometheus:bookworm --name <cluster>
# (The tag predates this recipe, when the binary came from Debian bookworm's `prometheus` package; that build
# has no Kubernetes service discovery, so `kubernetes_sd_configs` was rejected. The tag is kept for callers.)
#
# How: a tiny wrapper module requiring github.com/prometheus/prometheus v0.53.4 (the Go module version of
# Prometheus 2.53.4) with upstream's replace/exclude lines (they make `go install ...@v0.53.4` refuse), then
# `CGO_ENABLED=0 go build` of cmd/prometheus and cmd/promtool with upstream's tags (netgo, stringlabels) and
# version ldflags -> static binaries, cached under ${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}/artifacts
# -> the server alone in an otherwise empty rootfs -> `docker import`. promtool (static too) stays in the cache
# and checks the configs on the host: in the image it would add 94 MB to every `kind load`. All service discoveries are compiled in (as upstream).
# The web UI's assets are not (upstream generates them with npm: tag builtinassets); the HTTP API
# (/api/v1/query, /-/ready, /-/healthy) is complete. Go's module and build caches stay in their default
# locations, so a rebuild with no cached binary compiles only what changed.
#
# Image layout (like prom/prometheus): ENTRYPOINT ["/bin/prometheus"], CMD [--config.file=/etc/prometheus/prometheus.yml,
# --storage.tsdb.path=/prometheus, --web.listen-address=:9090], USER 65534:65534 (nobody, non-root),
# WORKDIR /prometheus (owned by nobody; a VOLUME), EXPOSE 9090. No shell, no promtool in the image.
# In Kubernetes: mount the ConfigMap at /etc/prometheus and an emptyDir at /prometheus; pass the flags as args.
#
# Idempotent and cached: if the image exists and carries this recipe's hash (label devloop.prometheus.recipe:
# this script + lib.sh), it exits 0 at once; an image from an older recipe is rebuilt (FORCE=1 always rebuilds;
# the cached binaries are reused, delete $CACHE/artifacts/prometheus-* to recompile).
# Concurrent runs are serialised with flock. Needs a running dockerd and Go >= 1.22 (go on PATH or
# /usr/local/go/bin/go); no root.
#
# Usage: tests/images/build-prometheus.sh     -> prints the image name on stdout, logs on stderr
# Env:   PROMETHEUS_IMAGE (default devloop-test/prometheus:bookworm), DEVLOOP_CACHE, FORCE=1 to rebuild,
#        KEEP_ROOTFS=1 to keep the temp dir, SMOKE=0 to skip the post-build checks.
set -euo pipefail

IMAGE="${PROMETHEUS_IMAGE:-devloop-test/prometheus:bookworm}"
CACHE="${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}"
LOCK="${PROMETHEUS_IMAGE_LOCK:-/tmp/devloop-prometheus-image.lock}"
PROM_VERSION=2.53.4
MODULE=github.com/prometheus/prometheus
MODULE_VERSION=v0.53.4 # Prometheus 2.x is tagged v0.<minor>.<patch> for Go modules
BUILD_TAGS=netgo,osusergo,stringlabels
ART="$CACHE/artifacts/prometheus-$MODULE_VERSION-${BUILD_TAGS//,/-}"
SRC="$CACHE/src/prometheus-$MODULE_VERSION"
NOBODY=65534
RECIPE_LABEL=devloop.prometheus.recipe

LOG_PREFIX=build-prometheus
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=tests/images/lib.sh
. "$HERE/lib.sh"
T0=$(now)
RECIPE="$(cat "${BASH_SOURCE[0]}" "$HERE/lib.sh" | sha256sum | cut -c1-16)"
# Present = there and built by this recipe (lib.sh's exit_if_present and take_lock ask this).
image_exists() {
  [ "$(docker image inspect -f "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$IMAGE" 2>/dev/null || true)" = "$RECIPE" ]
}
exit_if_present
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE exists but was not built by this recipe ($RECIPE); rebuilding"
fi

take_lock 1800

# --- binaries (cached) -------------------------------------------------------------------------------
GO="$(command -v go || true)"
[ -n "$GO" ] || GO=/usr/local/go/bin/go
export CGO_ENABLED=0 GOTOOLCHAIN=local
build_binaries() {
  [ -x "$GO" ] || { log "Go is needed to build Prometheus (not on PATH, not at /usr/local/go/bin/go)"; return 1; }
  local t out="$ART.tmp"
  t=$(now)
  mkdir -p "$SRC"
  # The wrapper module: upstream's replace/exclude lines must be in the main module's go.mod.
  cat >"$SRC/go.mod.want" <<EOF
module devloop.local/e2e/prometheusbuild

go 1.22

require $MODULE $MODULE_VERSION

replace (
	k8s.io/klog => github.com/simonpasquier/klog-gokit v0.3.0
	k8s.io/klog/v2 => github.com/simonpasquier/klog-gokit/v3 v3.3.0
)

exclude (
	github.com/grpc-ecosystem/grpc-gateway v1.14.7
	github.com/linode/linodego v1.0.0
	google.golang.org/api v0.30.0
)
EOF
  if ! cmp -s "$SRC/go.mod.want" "$SRC/go.mod.in" 2>/dev/null || [ ! -s "$SRC/go.sum" ]; then
    cp "$SRC/go.mod.want" "$SRC/go.mod"
    cp "$SRC/go.mod.want" "$SRC/go.mod.in"
    rm -f "$SRC/go.sum"
    printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s/cmd/prometheus"\n\t_ "%s/cmd/promtool"\n)\n' \
      "$MODULE" "$MODULE" >"$SRC/tools.go"
    log "resolving $MODULE@$MODULE_VERSION through $("$GO" env GOPROXY)"
    (cd "$SRC" && "$GO" mod tidy >&2) || { rm -f "$SRC/go.mod.in"; log "go mod tidy failed"; return 1; }
  fi
  local v=github.com/prometheus/common/version ldflags
  ldflags="-s -w -X $v.Version=$PROM_VERSION -X $v.Revision=$MODULE_VERSION -X $v.Branch=HEAD"
  ldflags="$ldflags -X $v.BuildUser=devloop -X $v.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"
  log "compiling prometheus + promtool $PROM_VERSION ($("$GO" env GOVERSION), tags $BUILD_TAGS, CGO_ENABLED=0;" \
    "about 5 minutes on 2 CPUs with an empty Go build cache $("$GO" env GOCACHE))"
  rm -rf "$out"
  mkdir -p "$out"
  (cd "$SRC" && "$GO" build -trimpath -tags "$BUILD_TAGS" -ldflags "$ldflags" -o "$out/" \
    "$MODULE/cmd/prometheus" "$MODULE/cmd/promtool" >&2) || { log "go build failed"; return 1; }
  "$out/prometheus" --version 2>&1 | grep -q "version $PROM_VERSION" || { log "$out/prometheus --version is not $PROM_VERSION"; return 1; }
  rm -rf "$ART"
  mv "$out" "$ART"
  log "built $ART ($(du -sh "$ART" | cut -f1), $(elapsed "$t"))"
}
if [ -x "$ART/prometheus" ] && [ -x "$ART/promtool" ]; then
  log "binaries cached: $ART"
else
  build_binaries
fi
BIN="$ART/prometheus"
TOOL="$ART/promtool"

# --- work dir ----------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/devloop-prometheus.XXXXXX")"
ROOTFS="$WORK/rootfs"
SMOKE_CTR=""
cleanup() {
  [ -z "$SMOKE_CTR" ] || docker rm -f -v "$SMOKE_CTR" >/dev/null 2>&1 || true
  if [ "${KEEP_ROOTFS:-0}" = 1 ]; then
    log "kept work dir $WORK"
  else
    rm -rf "$WORK"
  fi
  log "total $(elapsed "$T0")"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- rootfs ------------------------------------------------------------------------------------------
t=$(now)
mkdir -p "$ROOTFS"/{bin,etc/prometheus,prometheus,tmp}
install -m 0755 "$BIN" "$ROOTFS/bin/prometheus"
chmod 1777 "$ROOTFS/tmp"

# Default config (what prom/prometheus ships: scrape itself); in the cluster the user's ConfigMap replaces it.
cat >"$ROOTFS/etc/prometheus/prometheus.yml" <<'EOF'
global:
  scrape_interval: 15s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['localhost:9090']
EOF
printf 'root:x:0:0:root:/root:/bin/prometheus\nnobody:x:%s:%s:nobody:/prometheus:/bin/prometheus\n' "$NOBODY" "$NOBODY" \
  >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:%s:\n' "$NOBODY" >"$ROOTFS/etc/group"
printf 'hosts: files dns\n' >"$ROOTFS/etc/nsswitch.conf"

# The binaries are static: promtool runs on the host and must accept the default config.
"$TOOL" check config "$ROOTFS/etc/prometheus/prometheus.yml" >/dev/null ||
  { log "promtool rejects the default config"; exit 1; }
ROOTFS_SIZE="$(du -sh "$ROOTFS" | cut -f1)"
log "rootfs assembled: $ROOTFS_SIZE ($(elapsed "$t"))"

# --- import ------------------------------------------------------------------------------------------
# Everything root-owned, except the data directory: owned by nobody, so that the non-root server can write
# to it under plain `docker run` too (in Kubernetes an emptyDir is mounted there).
t=$(now)
TAR="$WORK/rootfs.tar"
tar --numeric-owner --owner=0 --group=0 -C "$ROOTFS" --exclude=./prometheus -cf "$TAR" .
tar --numeric-owner --owner="$NOBODY" --group="$NOBODY" -C "$ROOTFS" -rf "$TAR" ./prometheus
OLD_ID="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
docker import \
  --change 'ENTRYPOINT ["/bin/prometheus"]' \
  --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=:9090"]' \
  --change "USER $NOBODY:$NOBODY" \
  --change 'WORKDIR /prometheus' \
  --change 'EXPOSE 9090' \
  --change 'VOLUME ["/prometheus"]' \
  --change 'ENV PATH=/bin' \
  --change "LABEL org.opencontainers.image.version=\"$PROM_VERSION\"" \
  --change "LABEL org.opencontainers.image.description=\"Prometheus $PROM_VERSION built from $MODULE@$MODULE_VERSION (Go module proxy, CGO_ENABLED=0, tags $BUILD_TAGS) by devloop tests/images/build-prometheus.sh\"" \
  --change "LABEL $RECIPE_LABEL=\"$RECIPE\"" \
  -m "Prometheus $PROM_VERSION from $MODULE@$MODULE_VERSION (no registry pull)" \
  "$TAR" "$IMAGE" >/dev/null
log "imported $IMAGE ($(elapsed "$t"))"
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ] &&
  [ "$(docker image inspect -f '{{len .RepoTags}}' "$OLD_ID" 2>/dev/null)" = 0 ]; then
  docker rmi "$OLD_ID" >/dev/null 2>&1 && log "removed the replaced image ${OLD_ID#sha256:}" || true
fi

# --- smoke test --------------------------------------------------------------------------------------
# 1. promtool accepts a config with a kubernetes_sd_configs job (Debian's build did not).
# 2. The server, as its image user (non-root) on a random loopback port, loads that config (its Kubernetes
#    discovery points at an API server that is not there: it retries in the background), answers
#    GET /-/ready -> 200 and the query API (it scrapes itself), and shows the kubernetes_sd_configs job.
if [ "${SMOKE:-1}" = 1 ] && command -v curl >/dev/null; then
  t=$(now)
  CHECK="$WORK/check"
  mkdir -p "$CHECK"
  cat >"$CHECK/prometheus.yml" <<'EOF'
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['localhost:9090']
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
        api_server: http://127.0.0.1:1
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: 'true'
      - action: labelmap
        regex: __meta_kubernetes_pod_label_(.+)
EOF
  chmod 0755 "$WORK" "$CHECK"
  chmod 0644 "$CHECK/prometheus.yml"
  if ! said="$("$TOOL" check config "$CHECK/prometheus.yml" 2>&1)"; then
    echo "$said" >&2
    log "smoke test failed: promtool rejects a kubernetes_sd_configs job; removing the image"
    docker rmi "$IMAGE" >/dev/null 2>&1 || true
    exit 1
  fi
  SMOKE_CTR="devloop-prometheus-smoke-$$"
  docker run -d --name "$SMOKE_CTR" -v "$CHECK:/etc/prometheus:ro" -p 127.0.0.1::9090 "$IMAGE" >/dev/null
  port="$(docker port "$SMOKE_CTR" 9090/tcp | head -n1 | sed 's/.*://')"
  ok=0
  for _ in $(seq 1 300); do
    if curl -fsS --max-time 2 "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1 &&
      curl -fsS --max-time 2 "http://127.0.0.1:$port/api/v1/query?query=up" 2>/dev/null | grep -q '"status":"success"'; then
      ok=1
      break
    fi
    sleep 0.1
  done
  sd=0
  if [ "$ok" = 1 ] && curl -fsS --max-time 2 "http://127.0.0.1:$port/api/v1/status/config" | grep -q 'kubernetes_sd_configs'; then
    sd=1
  fi
  uid="$(docker top "$SMOKE_CTR" -o pid,uid 2>/dev/null | awk 'NR == 2 { print $2 }' || true)"
  if [ "$ok" != 1 ] || [ "$sd" != 1 ] || [ "$uid" != "$NOBODY" ]; then
    docker logs "$SMOKE_CTR" 2>&1 | tail -n 20 >&2
    log "smoke test failed (ready=$ok, kubernetes_sd_configs loaded=$sd, uid=$uid, want uid $NOBODY); removing the image"
    docker rm -f -v "$SMOKE_CTR" >/dev/null 2>&1 || true
    SMOKE_CTR=""
    docker rmi "$IMAGE" >/dev/null 2>&1 || true
    exit 1
  fi
  docker rm -f -v "$SMOKE_CTR" >/dev/null 2>&1 || true
  SMOKE_CTR=""
  log "smoke test ok: a kubernetes_sd_configs job loads (promtool and server), /-/ready and /api/v1/query answer," \
    "running as uid $uid ($(elapsed "$t"))"
fi

log "done: $IMAGE $($BIN --version 2>&1 | head -n1), $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1fMB", $1/1e6}')"
echo "$IMAGE"
