#!/usr/bin/env bash
# Build a Prometheus server image (a stand-in for the official `prom/prometheus`) from Debian bookworm's
# `prometheus` package (2.42), for machines with no container registry access (nothing can be pulled).
# devloop's monitoring section runs it in the kind cluster (monitoring.image in devloop.yaml):
#   kind load docker-image devloop-test/prometheus:bookworm --name <cluster>
#
# How: `apt-get download prometheus` + the packages that provide its shared libraries (the Debian binary is
# a cgo build linked against glibc) -> dpkg-deb -x -> copy /usr/bin/prometheus, /usr/bin/promtool, the libs
# listed by ldd and a small default config into an otherwise empty rootfs -> `docker import`.
# Only the server is taken from the package: its Depends (adduser, the libjs-* of the web UI) are left out,
# so the web UI's static pages are absent; the HTTP API (/api/v1/query, /-/ready, /-/healthy) is complete.
#
# Image layout (like prom/prometheus): ENTRYPOINT ["/bin/prometheus"], CMD [--config.file=/etc/prometheus/prometheus.yml,
# --storage.tsdb.path=/prometheus, --web.listen-address=:9090], USER 65534:65534 (nobody, non-root),
# WORKDIR /prometheus (owned by nobody; a VOLUME), EXPOSE 9090. No shell in the image.
# In Kubernetes: mount the ConfigMap at /etc/prometheus and an emptyDir at /prometheus; pass the flags as args.
#
# Idempotent and cached: if the image already exists it exits 0 at once (set FORCE=1 to rebuild).
# Downloaded .debs are kept in ${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}/debs and reused.
# Concurrent runs are serialised with flock. Needs a running dockerd; root only if `apt-get update` has
# to run (no package lists yet).
#
# Usage: tests/images/build-prometheus.sh     -> prints the image name on stdout, logs on stderr
# Env:   PROMETHEUS_IMAGE (default devloop-test/prometheus:bookworm), DEVLOOP_CACHE, FORCE=1 to rebuild,
#        KEEP_ROOTFS=1 to keep the temp dir, SMOKE=0 to skip the post-build HTTP check.
set -euo pipefail

IMAGE="${PROMETHEUS_IMAGE:-devloop-test/prometheus:bookworm}"
CACHE="${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}"
DEBS="$CACHE/debs"
LOCK="${PROMETHEUS_IMAGE_LOCK:-/tmp/devloop-prometheus-image.lock}"
PKG=prometheus
NOBODY=65534

LOG_PREFIX=build-prometheus
# shellcheck source=tests/images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T0=$(now)
exit_if_present

take_lock 600

mkdir -p "$DEBS"

# --- package lists -----------------------------------------------------------------------------------
pool_file() { { apt-cache show --no-all-versions "$1" 2>/dev/null || true; } | sed -n "s/^Filename: //p" | head -n1; }
PROM_POOL_FILE="$(pool_file "$PKG")"
if [ -z "$PROM_POOL_FILE" ]; then
  if [ "$(id -u)" != 0 ]; then
    log "no apt package lists for $PKG; run as root once (needs apt-get update): sudo $0"
    exit 1
  fi
  t=$(now)
  log "apt-get update (no package lists for $PKG)"
  apt-get update >&2 || { log "apt-get update failed"; exit 1; }
  log "apt-get update done ($(elapsed "$t"))"
  PROM_POOL_FILE="$(pool_file "$PKG")"
fi

# Fetch a package's candidate .deb into $DEBS unless it is already there; prints the .deb path.
fetch_deb() {
  local pkg="$1" fn="${2:-}" f
  [ -n "$fn" ] || fn="$(pool_file "$pkg")"
  [ -n "$fn" ] || { log "apt-cache has no candidate for $pkg"; return 1; }
  f="$DEBS/$(basename "$fn")"
  if [ ! -s "$f" ]; then
    log "downloading $(basename "$f")"
    (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) ||
      { log "apt-get download $pkg failed"; return 1; }
    [ -s "$f" ] || { log "apt-get download $pkg did not produce $f"; return 1; }
  fi
  echo "$f"
}

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

# --- download + extract ------------------------------------------------------------------------------
t=$(now)
PROM_DEB="$(fetch_deb "$PKG" "$PROM_POOL_FILE")"
PROM_VERSION="$(dpkg-deb -f "$PROM_DEB" Version)"
mkdir -p "$WORK/x/$PKG"
dpkg-deb -x "$PROM_DEB" "$WORK/x/$PKG"
BIN="$WORK/x/$PKG/usr/bin/prometheus"
TOOL="$WORK/x/$PKG/usr/bin/promtool"
[ -x "$BIN" ] || { log "$PROM_DEB has no /usr/bin/prometheus"; exit 1; }

# Resolve a path inside an extracted tree, following symlinks (absolute ones relative to the tree root).
resolve_in_tree() {
  local root="$1" p="$2" i target
  for ((i = 0; i < 20; i++)); do
    [ -L "$root$p" ] || { echo "$p"; return 0; }
    target=$(readlink "$root$p")
    case "$target" in
      /*) p="$target" ;;
      *) p="$(dirname "$p")/$target" ;;
    esac
    p=$(realpath -m -s "$p")
  done
  return 1
}

# Shared libraries of both binaries: ldd on the host (Debian too) -> dpkg -S -> the owning package's .deb.
declare -A LIB_PKG=()
LIBS=()
for exe in "$BIN" "$TOOL"; do
  [ -x "$exe" ] || continue
  ldd "$exe" >/dev/null 2>&1 || continue
  while read -r lib; do
    [ -n "$lib" ] || continue
    owner=""
    for cand in "$lib" "${lib#/usr}" "/usr$lib"; do
      owner=$(dpkg -S "$cand" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$owner" ] && { lib="$cand"; break; }
    done
    [ -n "$owner" ] || { log "no Debian package owns $lib (needed by $(basename "$exe"))"; exit 1; }
    [ -n "${LIB_PKG[$lib]:-}" ] && continue
    LIB_PKG["$lib"]="$owner"
    LIBS+=("$lib")
  done < <(ldd "$exe" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }')
done
LINKAGE=static
[ "${#LIBS[@]}" = 0 ] || LINKAGE="dynamic: ${LIBS[*]}"
log "$PKG $PROM_VERSION ($LINKAGE)"

declare -A PKG_DIR=()
PKG_VERSIONS="$PKG=$PROM_VERSION"
for lib in "${LIBS[@]}"; do
  p="${LIB_PKG[$lib]}"
  if [ -z "${PKG_DIR[$p]:-}" ]; then
    d="$(fetch_deb "$p")"
    mkdir -p "$WORK/x/$p"
    dpkg-deb -x "$d" "$WORK/x/$p"
    PKG_DIR["$p"]="$WORK/x/$p"
    PKG_VERSIONS="$PKG_VERSIONS $p=$(dpkg-deb -f "$d" Version)"
  fi
done
log "packages ready: $PKG_VERSIONS ($(elapsed "$t"))"

# --- rootfs ------------------------------------------------------------------------------------------
t=$(now)
mkdir -p "$ROOTFS"/{bin,etc/prometheus,prometheus,tmp,usr/share/doc/$PKG}
install -m 0755 "$BIN" "$ROOTFS/bin/prometheus"
[ ! -x "$TOOL" ] || install -m 0755 "$TOOL" "$ROOTFS/bin/promtool"
for lib in "${LIBS[@]}"; do
  p="${LIB_PKG[$lib]}"
  real="$(resolve_in_tree "${PKG_DIR[$p]}" "$lib")" || { log "symlink loop for $lib in $p"; exit 1; }
  [ -f "${PKG_DIR[$p]}$real" ] || { log "$lib not found in the $p .deb"; exit 1; }
  mkdir -p "$ROOTFS$(dirname "$lib")"
  install -m 0755 "${PKG_DIR[$p]}$real" "$ROOTFS$lib"
  if [ -f "${PKG_DIR[$p]}/usr/share/doc/$p/copyright" ]; then
    mkdir -p "$ROOTFS/usr/share/doc/$p"
    cp "${PKG_DIR[$p]}/usr/share/doc/$p/copyright" "$ROOTFS/usr/share/doc/$p/copyright"
  fi
done
cp "$WORK/x/$PKG/usr/share/doc/$PKG/copyright" "$ROOTFS/usr/share/doc/$PKG/copyright" 2>/dev/null || true
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

# The binaries must run from the assembled rootfs alone (catches a missing lib before importing).
if [ "${#LIBS[@]}" != 0 ] && [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
  chroot "$ROOTFS" /bin/prometheus --version >/dev/null || { log "/bin/prometheus does not run inside the rootfs"; exit 1; }
  chroot "$ROOTFS" /bin/promtool check config /etc/prometheus/prometheus.yml >/dev/null ||
    { log "promtool rejects the default config inside the rootfs"; exit 1; }
fi
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
  --change "LABEL org.opencontainers.image.description=\"Prometheus server from Debian bookworm ($PKG_VERSIONS), built by devloop tests/images/build-prometheus.sh\"" \
  -m "$PKG_VERSIONS from Debian .debs (no registry pull)" \
  "$TAR" "$IMAGE" >/dev/null
log "imported $IMAGE ($(elapsed "$t"))"
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ] &&
  [ "$(docker image inspect -f '{{len .RepoTags}}' "$OLD_ID" 2>/dev/null)" = 0 ]; then
  docker rmi "$OLD_ID" >/dev/null 2>&1 && log "removed the replaced image ${OLD_ID#sha256:}" || true
fi

# --- smoke test --------------------------------------------------------------------------------------
# Start it as its image user (non-root) on a random loopback port, wait for GET /-/ready -> 200, and check
# that the query API answers (the server scrapes itself with the default config).
if [ "${SMOKE:-1}" = 1 ] && command -v curl >/dev/null; then
  t=$(now)
  SMOKE_CTR="devloop-prometheus-smoke-$$"
  docker run -d --name "$SMOKE_CTR" -p 127.0.0.1::9090 "$IMAGE" >/dev/null
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
  uid="$(docker top "$SMOKE_CTR" -o pid,uid 2>/dev/null | awk 'NR == 2 { print $2 }' || true)"
  if [ "$ok" != 1 ] || [ "$uid" != "$NOBODY" ]; then
    docker logs "$SMOKE_CTR" 2>&1 | tail -n 20 >&2
    log "smoke test failed (ready=$ok, uid=$uid, want uid $NOBODY); removing the image"
    docker rm -f -v "$SMOKE_CTR" >/dev/null 2>&1 || true
    SMOKE_CTR=""
    docker rmi "$IMAGE" >/dev/null 2>&1 || true
    exit 1
  fi
  docker rm -f -v "$SMOKE_CTR" >/dev/null 2>&1 || true
  SMOKE_CTR=""
  log "smoke test ok: /-/ready and /api/v1/query answer, running as uid $uid ($(elapsed "$t"))"
fi

log "done: $IMAGE $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1fMB", $1/1e6}')"
echo "$IMAGE"
