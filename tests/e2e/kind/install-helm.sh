#!/usr/bin/env bash
# Install the pinned helm CLI with `go install` from the Go module proxy (helm's release tarballs at
# get.helm.sh are not reachable offline; the proxy is). Only the helm binary is built. Idempotent:
# skips when the pinned version is present.
# Usage: tests/e2e/kind/install-helm.sh        -> prints the path of the helm binary on stdout
# Env:   HELM_VERSION (default v3.19.0, devloop/tools.py's HELM_VERSION), DEVLOOP_CACHE (default
#        ~/.cache/devloop-e2e); helm goes to $DEVLOOP_CACHE/bin, next to kind.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
CACHE="${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}"
BIN_DIR="${HELM_BIN_DIR:-$CACHE/bin}"
mkdir -p "$BIN_DIR"
HELM="$BIN_DIR/helm"
if [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "${HELM_VERSION}"; then
  echo "helm ${HELM_VERSION} already installed: $HELM" >&2
else
  command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
  echo "installing helm.sh/helm/v3/cmd/helm@${HELM_VERSION} into $BIN_DIR" >&2
  start=$(date +%s)
  # helm's own Makefile stamps its version with -X; without it `helm version` would say the module's
  # default. -trimpath and -s -w keep the build reproducible and small.
  GOBIN="$BIN_DIR" GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0 go install \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  echo "installed in $(( $(date +%s) - start ))s" >&2
  "$HELM" version >&2
fi
echo "$HELM"
