#!/usr/bin/env bash
# Install the pinned kind CLI with `go install` (kind's documented install; works offline-of-registries
# because it only needs the Go module proxy). Idempotent: skips when the pinned version is present.
# Usage: tests/e2e/kind/install-kind.sh        -> prints the path of the kind binary on stdout
# Env:   KIND_VERSION (default v0.30.0), DEVLOOP_CACHE (default ~/.cache/devloop-e2e); kind goes to $DEVLOOP_CACHE/bin
set -euo pipefail
KIND_VERSION="${KIND_VERSION:-v0.30.0}"
CACHE="${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}"
BIN_DIR="${KIND_BIN_DIR:-$CACHE/bin}"
mkdir -p "$BIN_DIR"
KIND="$BIN_DIR/kind"
if [ -x "$KIND" ] && "$KIND" version 2>/dev/null | grep -q "kind ${KIND_VERSION} "; then
  echo "kind ${KIND_VERSION} already installed: $KIND" >&2
else
  command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
  echo "installing sigs.k8s.io/kind@${KIND_VERSION} into $BIN_DIR" >&2
  start=$(date +%s)
  GOBIN="$BIN_DIR" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kind@${KIND_VERSION}"
  echo "installed in $(( $(date +%s) - start ))s" >&2
  "$KIND" version >&2
fi
echo "$KIND"
