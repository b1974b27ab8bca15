#!/usr/bin/env bash
# Build the peers compared in benchmarks/loop.py (--tilt, --skaffold) from the Go module proxy.
#
# Optional, never run in CI: it needs Go (1.24+) and GOPROXY access, takes tens of minutes on
# 2 cores and ~3 GB of module cache. Runs at the lowest CPU priority (nice 19).
#
# Both modules' go.mod carry `replace` directives, so `go install pkg@version` refuses them:
# download the module source, copy it to a writable temp dir and `go build` there.
#
#   benchmarks/peers/build.sh [tilt|skaffold]...      # default: both
#   BIN=/some/dir benchmarks/peers/build.sh            # default /root/.cache/devloop-peers/bin
#
# Then: python benchmarks/loop.py --tilt "$BIN/tilt" --skaffold "$BIN/skaffold" ...
# Build times are appended to $BIN/../build-times.txt.
set -euo pipefail

TILT_VERSION=${TILT_VERSION:-v0.37.6}
SKAFFOLD_VERSION=${SKAFFOLD_VERSION:-v2.24.0}
BIN=${BIN:-${HOME:-/root}/.cache/devloop-peers/bin}
mkdir -p "$BIN"
# cgo stays on (Go's default with a C compiler): Tilt's Tiltfile language server uses tree-sitter (cgo).
export GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

build() { # name module version package-dir [go build flags...]
  local name=$1 module=$2 version=$3 pkg=$4 dir work start
  shift 4
  start=$(date +%s)
  dir=$(nice -n 19 go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || { echo "build.sh: go mod download $module@$version gave no Dir" >&2; return 1; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/devloop-peer-$name.XXXXXX")
  cp -r "$dir/." "$work/"
  chmod -R u+w "$work"
  echo "build.sh: building $name $version in $work" >&2
  if [ "$name" = tilt ] && [ ! -f "$work/pkg/assets/build/index.html" ]; then
    # Tilt's web UI is a yarn build that the module does not contain. A source build without it
    # runs in "dev" web mode (a webpack server started with yarn from the source tree: needs the
    # network, and its failure ends `tilt up`). With a version stamped in, Tilt serves the embedded
    # assets instead: a placeholder page here (the benchmark drives Tilt from its Tiltfile and the
    # terminal log; nothing needs the UI), so `tilt up` runs offline.
    printf '%s\n' '<!doctype html><title>Tilt</title><p>Tilt built by devloop benchmarks/peers/build.sh without its web UI.' \
      > "$work/pkg/assets/build/index.html"
  fi
  # A module whose go.sum line disagrees with the checksum database (tilt v0.37.6's go.sum has a hash
  # for github.com/docker/buildx v0.32.1 that sum.golang.org and the proxy's zip do not have): drop
  # that module's lines, so that the go command takes sum.golang.org's hash, and retry. Logged.
  local tries=0 log="$work.log" bad bad_mod bad_ver
  until (cd "$work" && nice -n 19 go build -trimpath "$@" -o "$BIN/$name" "$pkg") 2>"$log"; do
    cat "$log" >&2
    bad=$(sed -n 's/^verifying \([^@]*\)@\([^:]*\): checksum mismatch$/\1 \2/p' "$log" | head -1)
    tries=$((tries + 1))
    if [ -z "$bad" ] || [ $tries -gt 5 ]; then rm -f "$log"; return 1; fi
    echo "build.sh: go.sum of $name disagrees with sum.golang.org for $bad; using the checksum database's hash" >&2
    read -r bad_mod bad_ver <<<"$bad"
    grep -v "^$bad_mod $bad_ver[ /]" "$work/go.sum" > "$work/go.sum.new" && mv "$work/go.sum.new" "$work/go.sum"
  done
  rm -f "$log"
  rm -rf "$work"
  local took=$(( $(date +%s) - start ))
  echo "$(date -u +%FT%TZ) $name $version ${took}s $(nproc) cores" | tee -a "$BIN/../build-times.txt"
  "$BIN/$name" version 2>/dev/null | head -1 || true
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(tilt skaffold)
for t in "${targets[@]}"; do
  case $t in
    tilt)
      build tilt github.com/tilt-dev/tilt "$TILT_VERSION" ./cmd/tilt \
        -ldflags "-X main.version=${TILT_VERSION#v} -X main.date=$(date -u +%F)" ;;
    skaffold)
      build skaffold github.com/GoogleContainerTools/skaffold/v2 "$SKAFFOLD_VERSION" ./cmd/skaffold \
        -ldflags "-X github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/version.version=$SKAFFOLD_VERSION" ;;
    *) echo "build.sh: unknown peer $t (tilt, skaffold)" >&2; exit 2 ;;
  esac
done
