#!/usr/bin/env bash
# Build a local Docker Distribution registry image (the v2 HTTP API, a stand-in for the official
# `registry:2`) from Debian's `docker-registry` package, for machines with no container registry access
# (nothing can be pulled). Used for kind's local-registry pattern:
#   docker run -d --restart=always -p 127.0.0.1:5001:5000 --name kind-registry devloop-test/registry:bookworm
#
# How: `apt-get download docker-registry` + the packages that provide its shared libraries (the Debian
# binary is a cgo build: dynamically linked against glibc, so libc6 is needed) -> dpkg-deb -x -> copy the
# binary, the libs listed by ldd and a config.yml into an otherwise empty rootfs ->
# `tar -C rootfs -c . | docker import`. Network: Debian apt only (no registry, no HTTPS needed).
#
# Image layout (like registry:2): /bin/registry, /etc/docker/registry/config.yml, storage in the
# VOLUME /var/lib/registry, listens on :5000 (EXPOSE 5000), runs as root,
# ENTRYPOINT ["/bin/registry","serve"] CMD ["/etc/docker/registry/config.yml"]. REGISTRY_* env overrides
# work as usual (e.g. -e REGISTRY_STORAGE_DELETE_ENABLED=true). Like registry:2 (Alpine) it has a
# busybox shell (Debian's busybox-static, applets linked in /bin): devloop's garbage collection runs
# `sh -c` in the registry container to remove what `registry garbage-collect` leaves behind
# (devloop/gc.py SWEEP).
#
# Idempotent and cached: if the image already exists, built by this recipe (label devloop.registry.recipe
# = RECIPE below; an older image is rebuilt), it exits 0 at once (set FORCE=1 to rebuild).
# Downloaded .debs are kept in ${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}/debs and reused.
# Concurrent runs are serialised with flock. Needs a running dockerd; root only if `apt-get update` has
# to run (no package lists yet).
#
# Usage: tests/images/build-registry.sh         -> prints the image name on stdout, logs on stderr
# Env:   REGISTRY_IMAGE (default devloop-test/registry:bookworm), DEVLOOP_CACHE, FORCE=1 to rebuild,
#        KEEP_ROOTFS=1 to keep the temp dir, SMOKE=0 to skip the post-build HTTP check.
set -euo pipefail

IMAGE="${REGISTRY_IMAGE:-devloop-test/registry:bookworm}"
CACHE="${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}"
DEBS="$CACHE/debs"
LOCK="${REGISTRY_IMAGE_LOCK:-/tmp/devloop-registry-image.lock}"
PKG=docker-registry
SHELL_PKG=busybox-static
# Bump when the image's content changes: an image with another recipe label is rebuilt.
RECIPE=2-busybox
RECIPE_LABEL=devloop.registry.recipe

LOG_PREFIX=build-registry
# shellcheck source=tests/images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T0=$(now)
# Present = there and built by this recipe (lib.sh's exit_if_present and take_lock ask this).
image_exists() {
  [ "$(docker image inspect -f "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$IMAGE" 2>/dev/null || true)" = "$RECIPE" ]
}
exit_if_present
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE exists but was not built by this recipe ($RECIPE); rebuilding"
fi

take_lock 600

mkdir -p "$DEBS"

# --- package lists -----------------------------------------------------------------------------------
# Pool file name of a package's apt candidate, e.g. pool/main/d/docker-registry/docker-registry_2.8.2+ds1-1_amd64.deb
# (empty when there are no package lists: fresh machine / lists deleted).
pool_file() { { apt-cache show --no-all-versions "$1" 2>/dev/null || true; } | sed -n "s/^Filename: //p" | head -n1; }
REG_POOL_FILE="$(pool_file "$PKG")"
if [ -z "$REG_POOL_FILE" ]; then
  if [ "$(id -u)" != 0 ]; then
    log "no apt package lists for $PKG; run as root once (needs apt-get update): sudo $0"
    exit 1
  fi
  t=$(now)
  log "apt-get update (no package lists for $PKG)"
  apt-get update >&2 || { log "apt-get update failed"; exit 1; }
  log "apt-get update done ($(elapsed "$t"))"
  REG_POOL_FILE="$(pool_file "$PKG")"
fi

# Fetch a package's candidate .deb into $DEBS unless it is already there; prints the .deb path.
# The file name is the pool file name, or apt-get download's (which adds the epoch as `N%3a`).
fetch_deb() {
  local pkg="$1" fn="${2:-}" f epoched
  [ -n "$fn" ] || fn="$(pool_file "$pkg")"
  [ -n "$fn" ] || { log "apt-cache has no candidate for $pkg"; return 1; }
  f="$DEBS/$(basename "$fn")"
  epoched="$(find "$DEBS" -maxdepth 1 -name "${pkg}_*%3a$(basename "$fn" | sed "s/^${pkg}_//")" | head -n1)"
  [ -s "$f" ] || [ -z "$epoched" ] || f="$epoched"
  if [ ! -s "$f" ]; then
    log "downloading $(basename "$f")"
    # APT::Sandbox::User=root: the cache dir is usually not writable by the _apt user
    (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) ||
      { log "apt-get download $pkg failed"; return 1; }
    epoched="$(find "$DEBS" -maxdepth 1 -name "${pkg}_*%3a$(basename "$fn" | sed "s/^${pkg}_//")" | head -n1)"
    [ -s "$f" ] || [ -z "$epoched" ] || f="$epoched"
    [ -s "$f" ] || { log "apt-get download $pkg did not produce $f"; return 1; }
  fi
  echo "$f"
}

# --- work dir ----------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/devloop-registry.XXXXXX")"
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
REG_DEB="$(fetch_deb "$PKG" "$REG_POOL_FILE")"
REG_VERSION="$(dpkg-deb -f "$REG_DEB" Version)"
mkdir -p "$WORK/x/$PKG"
dpkg-deb -x "$REG_DEB" "$WORK/x/$PKG"
BIN="$WORK/x/$PKG/usr/bin/docker-registry"
[ -x "$BIN" ] || { log "$REG_DEB has no /usr/bin/docker-registry"; exit 1; }
SHELL_DEB="$(fetch_deb "$SHELL_PKG")"
mkdir -p "$WORK/x/$SHELL_PKG"
dpkg-deb -x "$SHELL_DEB" "$WORK/x/$SHELL_PKG"
BUSYBOX="$WORK/x/$SHELL_PKG/bin/busybox"
[ -x "$BUSYBOX" ] || { log "$SHELL_DEB has no /bin/busybox"; exit 1; }

# Resolve a path inside an extracted tree, following symlinks (absolute ones relative to the tree root,
# not to the host /). Prints the tree-relative real path.
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

# Shared libraries: `ldd` (run against the host's libs, the host is Debian too) gives the paths the
# binary loads (incl. the ELF interpreter); `dpkg -S` maps each to its package; the copy in the image
# comes from that package's .deb (the current apt candidate), not from the host.
declare -A LIB_PKG=()
LIBS=()
if ldd "$BIN" >/dev/null 2>&1; then
  while read -r lib; do
    [ -n "$lib" ] || continue
    owner=""
    for cand in "$lib" "${lib#/usr}" "/usr$lib"; do
      owner=$(dpkg -S "$cand" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$owner" ] && { lib="$cand"; break; }
    done
    [ -n "$owner" ] || { log "no Debian package owns $lib (needed by docker-registry)"; exit 1; }
    LIB_PKG["$lib"]="$owner"
    LIBS+=("$lib")
  done < <(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }')
fi
LINKAGE=static
[ "${#LIBS[@]}" = 0 ] || LINKAGE="dynamic: ${LIBS[*]}"
log "$PKG $REG_VERSION ($LINKAGE)"

declare -A PKG_DIR=()
PKG_VERSIONS="$PKG=$REG_VERSION $SHELL_PKG=$(dpkg-deb -f "$SHELL_DEB" Version)"
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
mkdir -p "$ROOTFS"/{bin,etc/docker/registry,var/lib/registry,tmp,usr/share/doc/$PKG}
install -m 0755 "$BIN" "$ROOTFS/bin/registry"
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
# The shell: a static busybox and a link per applet (sh, find, rm, du, ...), never over /bin/registry.
install -m 0755 "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ -e "$ROOTFS/bin/$applet" ] || ln -s busybox "$ROOTFS/bin/$applet"
done
mkdir -p "$ROOTFS/usr/share/doc/$SHELL_PKG"
cp "$WORK/x/$SHELL_PKG/usr/share/doc/$SHELL_PKG/copyright" "$ROOTFS/usr/share/doc/$SHELL_PKG/copyright" 2>/dev/null || true
chmod 1777 "$ROOTFS/tmp"

# Same settings as registry:2's config.yml, plus log level warn (the registry logs every request at info).
cat >"$ROOTFS/etc/docker/registry/config.yml" <<'EOF'
version: 0.1
log:
  level: warn
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
# Minimal user/name-service files (docker bind-mounts /etc/hosts, /etc/resolv.conf, /etc/hostname).
printf 'root:x:0:0:root:/root:/bin/registry\nnobody:x:65534:65534:nobody:/nonexistent:/bin/registry\n' \
  >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
printf 'hosts: files dns\n' >"$ROOTFS/etc/nsswitch.conf"

# The binary must run from the assembled rootfs alone (catches a missing lib before importing).
if [ "${#LIBS[@]}" != 0 ] && [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
  chroot "$ROOTFS" /bin/registry --version >/dev/null ||
    { log "/bin/registry does not run inside the rootfs"; exit 1; }
fi
ROOTFS_SIZE="$(du -sh "$ROOTFS" | cut -f1)"
log "rootfs assembled: $ROOTFS_SIZE ($(elapsed "$t"))"

# --- import ------------------------------------------------------------------------------------------
t=$(now)
OLD_ID="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"  # FORCE=1 rebuild
tar --numeric-owner --owner=0 --group=0 -C "$ROOTFS" -c . |
  docker import \
    --change 'ENTRYPOINT ["/bin/registry", "serve"]' \
    --change 'CMD ["/etc/docker/registry/config.yml"]' \
    --change 'EXPOSE 5000' \
    --change 'VOLUME ["/var/lib/registry"]' \
    --change 'ENV PATH=/bin' \
    --change "LABEL org.opencontainers.image.version=\"$REG_VERSION\"" \
    --change "LABEL $RECIPE_LABEL=\"$RECIPE\"" \
    --change "LABEL org.opencontainers.image.description=\"Docker Distribution registry from Debian bookworm ($PKG_VERSIONS), built by devloop tests/images/build-registry.sh\"" \
    -m "$PKG_VERSIONS from Debian .debs (no registry pull)" \
    - "$IMAGE" >/dev/null
log "imported $IMAGE ($(elapsed "$t"))"
# Drop the image this rebuild replaced, if nothing else references it (no tag left; in use -> kept).
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ] &&
  [ "$(docker image inspect -f '{{len .RepoTags}}' "$OLD_ID" 2>/dev/null)" = 0 ]; then
  docker rmi "$OLD_ID" >/dev/null 2>&1 && log "removed the replaced image ${OLD_ID#sha256:}" || true
fi

# --- smoke test --------------------------------------------------------------------------------------
# Start it on a random loopback port and wait for GET /v2/ -> 200 {}.
if [ "${SMOKE:-1}" = 1 ] && command -v curl >/dev/null; then
  t=$(now)
  SMOKE_CTR="devloop-registry-smoke-$$"
  docker run -d --name "$SMOKE_CTR" -p 127.0.0.1::5000 "$IMAGE" >/dev/null
  port="$(docker port "$SMOKE_CTR" 5000/tcp | head -n1 | sed 's/.*://')"
  ok=0
  for _ in $(seq 1 50); do
    if body="$(curl -fsS --max-time 2 "http://127.0.0.1:$port/v2/" 2>/dev/null)" && [ "$body" = "{}" ]; then
      ok=1
      break
    fi
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    docker logs "$SMOKE_CTR" 2>&1 | tail -n 20 >&2
    log "smoke test failed: GET /v2/ on the new image did not return {}; removing the image"
    docker rm -f -v "$SMOKE_CTR" >/dev/null 2>&1 || true
    SMOKE_CTR=""
    docker rmi "$IMAGE" >/dev/null 2>&1 || true
    exit 1
  fi
  docker rm -f -v "$SMOKE_CTR" >/dev/null 2>&1 || true
  SMOKE_CTR=""
  log "smoke test ok: GET /v2/ -> {} ($(elapsed "$t"))"
fi

log "done: $IMAGE $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1fMB", $1/1e6}')"
echo "$IMAGE"
