#!/usr/bin/env bash
# Build a PostgreSQL server image from Debian bookworm's postgresql-15 package, a stand-in for the official
# `postgres:16-alpine` on machines with no container registry (nothing can be pulled). The notes example
# (examples/notes) runs it as a StatefulSet in the e2e test; on a laptop the example uses postgres:16-alpine.
#
# How: the root filesystem of devloop-test/node-base:bookworm (a debootstrap'd bookworm minbase, built by
# build-node-base.sh from Debian packages; exported, so no second debootstrap), Node.js purged, then
# `apt-get install postgresql-15` in a chroot, a small entrypoint (below) and `docker import`.
# Network: the plain-HTTP Debian mirror only.
#
# What it does like the official image (the parts a StatefulSet relies on):
# - ENTRYPOINT docker-entrypoint.sh, CMD ["postgres"]; any other command (psql ...) runs as given.
# - On first start, when $PGDATA (default /var/lib/postgresql/data) holds no cluster: initdb into it as
#   $POSTGRES_USER (default postgres) with $POSTGRES_PASSWORD (required; never printed), scram-sha-256 for
#   TCP clients from anywhere, then CREATE DATABASE $POSTGRES_DB (default: the user's name). On a later
#   start (the volume kept) the cluster is used as it is.
# - Started as root, it makes $PGDATA its own (a fresh volume is root's) and drops to user postgres.
# - Listens on 5432 on every address; the binaries (postgres, psql, pg_isready) are on PATH.
# - No JIT (LLVM is left out: 130 MB).
# - SIGTERM stops it with postgres's fast shutdown (the official image's STOPSIGNAL SIGINT).
# Not: the /docker-entrypoint-initdb.d scripts, POSTGRES_INITDB_ARGS, *_FILE variables.
#
# Idempotent and cached: an image built by this recipe (label devloop.postgres.recipe) exits 0 at once;
# FORCE=1 rebuilds. Concurrent runs are serialised with flock. Needs root (chroot) and a running dockerd.
#
# Usage: tests/images/build-postgres.sh      -> prints the image name on stdout, logs on stderr
# Env:   POSTGRES_IMAGE (default devloop-test/postgres:bookworm), NODE_BASE_IMAGE (the rootfs it starts
#        from), FORCE=1, KEEP_ROOTFS=1, SMOKE=0 to skip the check that it initialises and answers.
set -euo pipefail

IMAGE="${POSTGRES_IMAGE:-devloop-test/postgres:bookworm}"
BASE="${NODE_BASE_IMAGE:-devloop-test/node-base:bookworm}"
LOCK="${POSTGRES_IMAGE_LOCK:-/tmp/devloop-postgres-image.lock}"
PG_MAJOR=15
RECIPE_LABEL=devloop.postgres.recipe

LOG_PREFIX=build-postgres
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=tests/images/lib.sh
. "$HERE/lib.sh"
T0=$(now)
RECIPE="$(cat "${BASH_SOURCE[0]}" "$HERE/lib.sh" | sha256sum | cut -c1-16)"
image_exists() {
  [ "$(docker image inspect -f "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$IMAGE" 2>/dev/null || true)" = "$RECIPE" ]
}
exit_if_present

if [ "$(id -u)" != 0 ]; then
  log "must run as root (chroot/mount); try: sudo $0"
  exit 1
fi
take_lock 1200

NODE_BASE_IMAGE="$BASE" bash "$HERE/build-node-base.sh" >/dev/null

WORK="$(mktemp -d /var/tmp/devloop-postgres.XXXXXX)"
ROOTFS="$WORK/rootfs"
MOUNTS=()
CTR=""
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  [ -z "$CTR" ] || docker rm -f -v "$CTR" >/dev/null 2>&1 || true
  if [ "${KEEP_ROOTFS:-0}" = 1 ]; then
    log "kept rootfs in $ROOTFS"
  else
    rm -rf --one-file-system "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- rootfs: the Node base's bookworm, exported -------------------------------------------------------
t=$(now)
mkdir -p "$ROOTFS"
CTR="$(docker create "$BASE" true)"
docker export "$CTR" | tar -C "$ROOTFS" --numeric-owner -x
docker rm -f "$CTR" >/dev/null
CTR=""
log "exported $BASE ($(elapsed "$t"))"

printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
rm -f "$ROOTFS/etc/npmrc"
# the Node base leaves /dev empty (docker provides it at run time); apt needs a few device nodes
mknod -m 666 "$ROOTFS/dev/null" c 1 3
mknod -m 666 "$ROOTFS/dev/zero" c 1 5
mknod -m 666 "$ROOTFS/dev/random" c 1 8
mknod -m 666 "$ROOTFS/dev/urandom" c 1 9
mount -t proc proc "$ROOTFS/proc"
MOUNTS+=("$ROOTFS/proc")

in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

t=$(now)
log "apt-get purge nodejs npm; install postgresql-$PG_MAJOR"
{
  in_root apt-get update &&
    in_root apt-get purge -y --auto-remove nodejs npm &&
    in_root apt-get install -y --no-install-recommends "postgresql-$PG_MAJOR"
} >"$WORK/apt.log" 2>&1 || { tail -n 40 "$WORK/apt.log" >&2; log "apt-get failed"; exit 1; }
PG_V="$(in_root "/usr/lib/postgresql/$PG_MAJOR/bin/postgres" --version | awk '{print $3}')"
log "apt-get done: PostgreSQL $PG_V ($(elapsed "$t"))"

# JIT: LLVM and z3 are 130 MB of the image, loaded only by llvmjit.so; without it postgres runs without
# JIT (the default `jit = on` then does nothing), which a development database does not miss.
in_root dpkg --purge --force-depends libllvm14 libz3-4 >>"$WORK/apt.log" 2>&1
rm -rf "$ROOTFS/usr/lib/postgresql/$PG_MAJOR/lib/llvmjit"* "$ROOTFS/usr/lib/postgresql/$PG_MAJOR/lib/bitcode"

# Debian's package created a cluster in /var/lib/postgresql/15/main with its own config: not ours.
in_root pg_dropcluster "$PG_MAJOR" main >/dev/null 2>&1 || true
mkdir -p "$ROOTFS/var/lib/postgresql/data" "$ROOTFS/var/run/postgresql"
in_root chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
chmod 2777 "$ROOTFS/var/run/postgresql"

cat >"$ROOTFS/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# devloop-test/postgres: the part of the official postgres image's entrypoint a StatefulSet relies on.
set -eu
if [ "${1:-}" != postgres ]; then
  exec "$@"  # psql, pg_isready, sh: as given
fi
shift
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
if [ "$(id -u)" = 0 ]; then
  # a fresh volume belongs to root: make the data directory postgres's, then drop to it
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "error: database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  user="${POSTGRES_USER:-postgres}"
  db="${POSTGRES_DB:-$user}"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$db" != postgres ]; then
    psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres -q -c "CREATE DATABASE \"$db\""
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "PostgreSQL init process complete; ready for start up."
fi
# SIGTERM (docker stop, Kubernetes) becomes postgres's fast shutdown (SIGINT), as the official image's
# STOPSIGNAL does (`docker import` cannot set one): postgres's own SIGTERM waits for every client.
postgres -c listen_addresses='*' "$@" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' TERM INT
status=0
while kill -0 "$pid" 2>/dev/null; do
  wait "$pid" && status=0 || status=$?
done
exit "$status"
EOF
chmod 755 "$ROOTFS/usr/local/bin/docker-entrypoint.sh"

# --- slim down ---------------------------------------------------------------------------------------
umount -l "$ROOTFS/proc"
MOUNTS=()
in_root apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/sbin/policy-rc.d \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/root/.npm "$ROOTFS"/root/.cache "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
  "$ROOTFS"/usr/lib/node_modules "$ROOTFS"/dev/*
find "$ROOTFS/var/log" -type f -exec truncate -s 0 {} + 2>/dev/null || true
: >"$ROOTFS/etc/resolv.conf"
chmod 1777 "$ROOTFS/tmp" "$ROOTFS/var/tmp"

# --- import ------------------------------------------------------------------------------------------
t=$(now)
OLD="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . |
  docker import \
    --change "ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PG_MAJOR=$PG_MAJOR" \
    --change "ENV PG_VERSION=$PG_V" \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change 'VOLUME /var/lib/postgresql/data' \
    --change 'EXPOSE 5432' \
    --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
    --change 'CMD ["postgres"]' \
    --change "LABEL org.opencontainers.image.description=\"Debian bookworm postgresql-$PG_MAJOR $PG_V (built by devloop tests/images/build-postgres.sh)\"" \
    --change "LABEL $RECIPE_LABEL=\"$RECIPE\"" \
    -m "$BASE's bookworm rootfs, nodejs purged, + postgresql-$PG_MAJOR" \
    - "$IMAGE" >/dev/null
NEW="$(docker image inspect -f '{{.Id}}' "$IMAGE")"
if [ -n "$OLD" ] && [ "$OLD" != "$NEW" ]; then
  docker image rm "$OLD" >/dev/null 2>&1 || true  # the image this build replaced, when nothing else uses it
fi
log "imported $IMAGE $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0fMB", $1/1e6}') ($(elapsed "$t"))"

# --- smoke test: initialises an empty data directory, then answers a password login over TCP ----------
if [ "${SMOKE:-1}" = 1 ]; then
  t=$(now)
  CTR="$(docker run -d --network none -e POSTGRES_USER=smoke -e POSTGRES_PASSWORD=smoke-pw -e POSTGRES_DB=smokedb "$IMAGE")"
  ok=""
  for _ in $(seq 1 120); do
    if docker exec -e PGPASSWORD=smoke-pw "$CTR" psql -h 127.0.0.1 -U smoke -d smokedb -tAc 'select 40 + 2' 2>/dev/null | grep -qx 42; then
      ok=1
      break
    fi
    sleep 0.5 # polling a starting server, bounded
  done
  if [ -z "$ok" ]; then
    docker logs "$CTR" >&2 || true
    log "smoke test failed: no answer from postgres"
    exit 1
  fi
  log "smoke test: initdb + password login over TCP ($(elapsed "$t"))"
fi
log "done: $IMAGE total $(elapsed "$T0")"
echo "$IMAGE"
