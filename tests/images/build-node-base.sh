#!/usr/bin/env bash
# Build a local Debian-based Node.js image from Debian packages only, for machines with no container
# registry (nothing can be pulled, so node:*-alpine is unavailable). Used as the sample-app base:
#   docker build --build-arg NODE_IMAGE=devloop-test/node-base:bookworm sample-app
#
# How: debootstrap --variant=minbase bookworm into a temp dir, chroot apt-get install
# --no-install-recommends nodejs npm ca-certificates, strip apt caches/docs, then
# `tar -C rootfs -c . | docker import`. Network: plain-HTTP Debian mirror only (no HTTPS, no registry).
#
# Idempotent and cached: if the image already exists it exits 0 at once (set FORCE=1 to rebuild).
# Concurrent runs are serialised with flock, so parallel tests build it only once.
# Needs root (debootstrap, chroot, mount) and a running dockerd.
#
# Usage: tests/images/build-node-base.sh         -> prints the image name on stdout, logs on stderr
# Env:   NODE_BASE_IMAGE (default devloop-test/node-base:bookworm), DEBIAN_SUITE (default bookworm),
#        DEBIAN_MIRROR (default: the deb.debian.org URI found in /etc/apt/sources.list{,.d},
#        else http://deb.debian.org/debian), FORCE=1 to rebuild, KEEP_ROOTFS=1 to keep the temp dir.
set -euo pipefail

IMAGE="${NODE_BASE_IMAGE:-devloop-test/node-base:bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"
LOCK="${NODE_BASE_LOCK:-/tmp/devloop-node-base.lock}"

LOG_PREFIX=build-node-base
# shellcheck source=tests/images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T0=$(now)
exit_if_present

if [ "$(id -u)" != 0 ]; then
  log "must run as root (debootstrap/chroot/mount); try: sudo $0"
  exit 1
fi

take_lock 1200

# --- mirror ------------------------------------------------------------------------------------------
find_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    # deb822 "URIs: http://deb.debian.org/debian" or one-line "deb [opts] http://deb.debian.org/debian bookworm main"
    uri=$(grep -Eo 'https?://deb\.debian\.org/debian/?([[:space:]]|$)' "$f" 2>/dev/null | head -n1 | tr -d '[:space:]') || true
    if [ -n "$uri" ]; then
      # plain HTTP: apt verifies the Release signatures, and HTTPS needs ca-certificates we don't have yet
      uri="${uri/https:/http:}"
      echo "${uri%/}"
      return
    fi
  done
  echo "http://deb.debian.org/debian"
}
MIRROR="${DEBIAN_MIRROR:-$(find_mirror)}"
MIRROR="${MIRROR%/}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-${MIRROR}-security}"
ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
log "image=$IMAGE suite=$SUITE arch=$ARCH mirror=$MIRROR security=$SECURITY_MIRROR"

# --- tools -------------------------------------------------------------------------------------------
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  t=$(now)
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends debootstrap >&2 ||
    { apt-get update >&2 && apt-get install -y --no-install-recommends debootstrap >&2; }
  log "debootstrap installed ($(elapsed "$t"))"
fi

# --- rootfs ------------------------------------------------------------------------------------------
WORK="$(mktemp -d /var/tmp/devloop-node-base.XXXXXX)"
ROOTFS="$WORK/rootfs"
MOUNTS=()
# Work on a tmpfs: ~40k small files; deleting them from disk afterwards alone took ~40 s here.
if [ "${NODE_BASE_TMPFS:-1}" = 1 ] && [ "${KEEP_ROOTFS:-0}" != 1 ] &&
  mount -t tmpfs -o size=3g,mode=0755 devloop-node-base "$WORK" 2>/dev/null; then
  MOUNTS+=("$WORK")
  log "working on tmpfs $WORK"
fi
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  if [ "${KEEP_ROOTFS:-0}" = 1 ]; then
    log "kept rootfs in $ROOTFS"
  else
    local tc
    tc=$(now)
    rm -rf --one-file-system "$WORK"
    log "removed temp rootfs ($(elapsed "$tc")); total $(elapsed "$T0")"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t=$(now)
log "debootstrap --variant=minbase $SUITE -> $ROOTFS"
debootstrap --variant=minbase --arch="$ARCH" --components=main \
  --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
  { tail -n 40 "$WORK/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
log "debootstrap done ($(elapsed "$t"))"

# apt sources incl. updates + security, dpkg excludes (no docs/man/locales), no daemons started
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-devloop-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/01-devloop" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Dpkg::Use-Pty "0";
quiet "1";
EOF
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true

mount -t proc proc "$ROOTFS/proc"
MOUNTS+=("$ROOTFS/proc")
mount -t sysfs sysfs "$ROOTFS/sys"
MOUNTS+=("$ROOTFS/sys")

in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

t=$(now)
log "apt-get install nodejs npm ca-certificates (+ security updates)"
{
  in_root apt-get update &&
    in_root apt-get -y dist-upgrade &&
    in_root apt-get install -y --no-install-recommends nodejs npm ca-certificates
} >"$WORK/apt.log" 2>&1 || { tail -n 40 "$WORK/apt.log" >&2; log "apt-get failed"; exit 1; }
log "apt-get done ($(elapsed "$t"))"

# sanity checks on what the sample-app Dockerfile needs
NODE_V="$(in_root node --version)"
NPM_V="$(in_root npm --version 2>/dev/null)"
for tool in sh groupadd useradd id; do
  in_root sh -c "command -v $tool" >/dev/null || { log "missing $tool in rootfs"; exit 1; }
done
log "node $NODE_V, npm $NPM_V"

# npm runs scripts through `sh -c`; Debian's sh is dash, which does not exec the command, and npm only
# forwards SIGTERM to that shell. With CMD ["npm","start"] (npm = PID 1) dash dies on SIGTERM, node never
# sees it and is SIGKILLed when npm exits (no graceful shutdown, exit code 1). bash execs a single
# command given with -c, so node gets the forwarded SIGTERM directly (busybox ash on alpine does too).
cat >"$ROOTFS/etc/npmrc" <<'EOF'
script-shell=/bin/bash
update-notifier=false
EOF
[ "$(in_root npm config get script-shell)" = /bin/bash ] || { log "/etc/npmrc not honoured by npm"; exit 1; }

# --- slim down ---------------------------------------------------------------------------------------
umount -l "$ROOTFS/sys" "$ROOTFS/proc"
in_root apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/lintian/* \
  "$ROOTFS"/root/.npm "$ROOTFS"/root/.cache \
  "$ROOTFS"/usr/sbin/policy-rc.d
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
find "$ROOTFS/var/log" -type f -exec truncate -s 0 {} + 2>/dev/null || true
# docker provides these at run time
rm -rf "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* "$ROOTFS"/run/* "$ROOTFS"/dev/* "$ROOTFS"/proc/* "$ROOTFS"/sys/*
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/machine-id"
echo localhost >"$ROOTFS/etc/hostname"
chmod 1777 "$ROOTFS/tmp" "$ROOTFS/var/tmp"
ROOTFS_SIZE="$(du -sh --one-file-system "$ROOTFS" | cut -f1)"

# --- import ------------------------------------------------------------------------------------------
t=$(now)
log "docker import -> $IMAGE (rootfs $ROOTFS_SIZE)"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV NODE_VERSION=${NODE_V#v}" \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase + Debian nodejs $NODE_V / npm $NPM_V (built by devloop tests/images/build-node-base.sh)\"" \
    --change 'CMD ["node"]' \
    -m "debootstrap $SUITE minbase + nodejs npm ca-certificates from $MIRROR" \
    - "$IMAGE" >/dev/null
log "imported ($(elapsed "$t"))"

# smoke test
docker run --rm --network none "$IMAGE" sh -c 'node -e "process.stdout.write(process.version)"; echo " npm $(npm --version) script-shell=$(npm config get script-shell)"; ls -ld /tmp' >&2
log "done: $IMAGE $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0fMB", $1/1e6}') total $(elapsed "$T0")"
echo "$IMAGE"
