#!/usr/bin/env bash
# Install the pinned kind CLI with `go install` (kind's documented install; works offline-of-registries
# because it only needs the Go module proxy). Idempotent: skips when the pinned version is present.
# Usage: tests/e2e/kind/install-kind.sh        -> prints the path of the kind binary on stdout
# Env:   KIND_VERSION (default v0.30.0), DEVLOOP_CACHE (default ~/.cache/devloop-e2e); kind goes to $DEVLOOP_CACHE/bin
# The module is built only when its Go checksum (h1:, as sum.golang.org records it) is the one pinned
# below, as devloop/tools.py does (KIND_GO_SUM); kind's own go.sum then pins every dependency.
set -euo pipefail
KIND_VERSION="${KIND_VERSION:-v0.30.0}"
declare -A KIND_GO_SUM=(
  [v0.30.0]="h1:2Xi1KFEfSMm0XDcvKnUt15ZfgRPCT0OnCBbpgh8DztY="  # sum.golang.org lookup sigs.k8s.io/kind@v0.30.0
)
CACHE="${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}"
BIN_DIR="${KIND_BIN_DIR:-$CACHE/bin}"
mkdir -p "$BIN_DIR"
KIND="$BIN_DIR/kind"
if [ -x "$KIND" ] && "$KIND" version 2>/dev/null | grep -q "kind ${KIND_VERSION} "; then
  echo "kind ${KIND_VERSION} already installed: $KIND" >&2
else
  command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
  want="${KIND_GO_SUM[$KIND_VERSION]:-}"
  [ -n "$want" ] || { echo "no pinned Go checksum for sigs.k8s.io/kind@${KIND_VERSION}: add it to $0" >&2; exit 1; }
  have=$(go mod download -json "sigs.k8s.io/kind@${KIND_VERSION}" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",*$/\1/p')
  if [ "$have" != "$want" ]; then
    echo "sigs.k8s.io/kind@${KIND_VERSION} has Go checksum '${have}', not the pinned ${want}: not building it" >&2
    exit 1
  fi
  echo "installing sigs.k8s.io/kind@${KIND_VERSION} into $BIN_DIR (module checksum ${have}, as pinned)" >&2
  start=$(date +%s)
  GOBIN="$BIN_DIR" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kind@${KIND_VERSION}"
  echo "installed in $(( $(date +%s) - start ))s" >&2
  "$KIND" version >&2
fi
echo "$KIND"
