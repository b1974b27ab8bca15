# Shared by the image scripts here (source it after setting IMAGE and LOG_PREFIX).
log() { echo "[$LOG_PREFIX] $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
image_exists() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

# Fast path: the image is already there (FORCE=1 rebuilds). Prints the image name.
exit_if_present() {
  if [ "${FORCE:-0}" != 1 ] && image_exists; then
    log "$IMAGE already present ($(elapsed "$T0")); FORCE=1 to rebuild"
    echo "$IMAGE"
    exit 0
  fi
}

# Serialise concurrent builds on $LOCK (fd 9, held until the script exits); afterwards re-check,
# since another run may just have built the image. $1: seconds to wait for the lock.
take_lock() {
  exec 9>"$LOCK"
  if ! flock -w "$1" 9; then
    log "timed out waiting for lock $LOCK"
    exit 1
  fi
  if [ "${FORCE:-0}" != 1 ] && image_exists; then
    log "$IMAGE was built by a concurrent run ($(elapsed "$T0"))"
    echo "$IMAGE"
    exit 0
  fi
}
