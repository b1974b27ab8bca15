#!/usr/bin/env bash
# Build the offline kind node image for devloop's e2e tests, without any container registry.
#
#   tests/e2e/kind/build-node-image.sh          # prints the image tag on stdout when done
#
# The tag is read from tests/e2e/kind/NODE_IMAGE (one line, e.g. devloop-test/kind-node:v1.34.4).
# Everything comes from Debian packages (debootstrap) and the Go module proxy:
#   - node rootfs: debootstrap bookworm + systemd, iptables, conntrack, containerd, runc, CNI plugins
#   - kubelet/kubeadm/kubectl/kube-apiserver/-controller-manager/-scheduler/kube-proxy: k8s.io/kubernetes
#     built through a small wrapper module (staging modules replaced by their published v0.X.Y)
#   - etcd (go.etcd.io/etcd/server/v3 wrapper), coredns, crictl (go install), pause (gcc -static)
#   - kind's entrypoint/unit files from the sigs.k8s.io/kind module cache (not copied into the repo)
# The control-plane images are made FROM scratch (kube-proxy: FROM a minimal iptables rootfs),
# docker-saved and imported into the node's containerd (k8s.io namespace) under exactly the names
# `kubeadm config images list` prints; the node container is then docker-committed.
#
# Idempotent: if the image exists and was built from the same recipe (label), it exits at once.
# Caches: Go module/build caches in their default locations; everything else under
# ${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e} (never inside the repo).
# Env: DEVLOOP_CACHE, DEVLOOP_FORCE_REBUILD=1 (rebuild the image; cached artifacts are reused),
#      DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
# One brace group: bash parses the whole script before running it, so editing this file while
# it runs cannot corrupt the running instance.
{

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
NODE_IMAGE="$(tr -d ' \t\r\n' <"$HERE/NODE_IMAGE")"

# ---- pins ------------------------------------------------------------------------------------
K8S_VERSION="${NODE_IMAGE##*:}"              # v1.34.4 (the tag is the Kubernetes version)
KIND_VERSION=v0.30.0
ETCD_MODULE_VERSION=v3.6.5                   # kubeadm 1.34: DefaultEtcdVersion 3.6.5-0
COREDNS_VERSION=v1.12.1                      # kubeadm 1.34: CoreDNSVersion
CRICTL_VERSION=v1.34.0
SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NODE_PACKAGES="systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,socat,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins"
PROXY_PACKAGES="iptables,conntrack"

CACHE="${DEVLOOP_CACHE:-$HOME/.cache/devloop-e2e}"
LOGS="$CACHE/logs"
WORK="$CACHE/work"
ART="$CACHE/artifacts"
mkdir -p "$CACHE/bin" "$LOGS" "$WORK" "$ART" "$CACHE/rootfs" "$CACHE/debs" "$CACHE/src"

# ---- logging / timing ------------------------------------------------------------------------
T0=$(date +%s)
STEP_NAME="" STEP_T=0
SUMMARY=()
log() { echo "[build-node-image $(date +%H:%M:%S)] $*" >&2; }
step() { end_step; STEP_NAME="$1"; STEP_T=$(date +%s); log "==> $1"; }
end_step() {
  if [ -n "$STEP_NAME" ]; then
    local d=$(( $(date +%s) - STEP_T ))
    SUMMARY+=("$(printf '%5ss  %s' "$d" "$STEP_NAME")")
    log "<== $STEP_NAME (${d}s)"
    STEP_NAME=""
  fi
}
summary() {
  end_step
  log "timings:"; for l in "${SUMMARY[@]}"; do echo "    $l" >&2; done
  log "total $(( $(date +%s) - T0 ))s"
}
die() { log "ERROR: $*"; exit 1; }

# recipe hash: changes to this script or the node files invalidate the image
RECIPE="$(cat "$0" "$HERE"/node/* "$HERE/NODE_IMAGE" | sha256sum | cut -c1-16)"

# ---- 0. fast path ----------------------------------------------------------------------------
if [ "${DEVLOOP_FORCE_REBUILD:-0}" != 1 ] &&
   [ "$(docker image inspect -f '{{ index .Config.Labels "devloop.kind-node.recipe" }}' "$NODE_IMAGE" 2>/dev/null || true)" = "$RECIPE" ]; then
  log "$NODE_IMAGE is up to date (recipe $RECIPE)"
  if [ ! -x "$CACHE/bin/kubectl" ]; then
    if [ -x "$ART/kubernetes-$K8S_VERSION/kubectl" ]; then cp "$ART/kubernetes-$K8S_VERSION/kubectl" "$CACHE/bin/kubectl"
    else log "note: $CACHE/bin/kubectl missing (DEVLOOP_FORCE_REBUILD=1 rebuilds it)"; fi
  fi
  summary
  echo "$NODE_IMAGE"
  exit 0
fi

# ---- 1. preflight ----------------------------------------------------------------------------
step "preflight"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
command -v docker >/dev/null || die "docker is required"
docker info >/dev/null 2>&1 || die "docker daemon not reachable"
command -v go >/dev/null || die "go is required"
command -v gcc >/dev/null || die "gcc is required"
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
log "image $NODE_IMAGE, kubernetes $K8S_VERSION, recipe $RECIPE, cache $CACHE"

# ---- 2. root filesystems (debootstrap), started in the background: network/disk bound --------
rootfs_tar() { # name packages -> path of the cached tarball
  echo "$CACHE/rootfs/$1-$SUITE-$(echo "$2" | sha256sum | cut -c1-12).tar"
}
NODE_TAR="$(rootfs_tar node "$NODE_PACKAGES")"
PROXY_TAR="$(rootfs_tar kube-proxy "$PROXY_PACKAGES")"
build_rootfs() { # name packages tar
  local name=$1 pkgs=$2 tar=$3 dir="$WORK/rootfs-$1" s
  s=$(date +%s)
  rm -rf "$dir"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$pkgs" "$SUITE" "$dir" "$DEBIAN_MIRROR"
  chroot "$dir" apt-get clean
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* \
         "$dir"/usr/share/locale/* "$dir"/var/log/* "$dir"/var/cache/debconf/*-old
  tar -C "$dir" --numeric-owner -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
  rm -rf "$dir"
  echo "debootstrap $name done in $(( $(date +%s) - s ))s"
}
ROOTFS_PIDS=()
kill_jobs() { local j; for j in $(jobs -pr); do kill "$j" 2>/dev/null || true; done; }
trap kill_jobs EXIT
for spec in "node|$NODE_PACKAGES|$NODE_TAR" "kube-proxy|$PROXY_PACKAGES|$PROXY_TAR"; do
  IFS='|' read -r n p t <<<"$spec"
  if [ -f "$t" ]; then
    log "rootfs $n: cached ($t)"
  else
    log "rootfs $n: debootstrap in background (log: $LOGS/debootstrap-$n.log)"
    build_rootfs "$n" "$p" "$t" >"$LOGS/debootstrap-$n.log" 2>&1 &
    ROOTFS_PIDS+=("$!:$n")
  fi
done

# ---- 3. Go modules ---------------------------------------------------------------------------
step "go module download (kind, kubernetes, etcd, coredns, cri-tools)"
KIND_DIR="$(cd /tmp && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
K8S_DIR="$(cd /tmp && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
[ -d "$KIND_DIR/images/base/files" ] || die "kind module files not found ($KIND_DIR)"
[ -f "$K8S_DIR/go.mod" ] || die "kubernetes module not found ($K8S_DIR)"

# ---- 4. etcd, coredns, crictl: built in the background while Kubernetes compiles -------------
ETCD_BIN="$ART/etcd-$ETCD_MODULE_VERSION/etcd"
COREDNS_BIN="$ART/coredns-$COREDNS_VERSION/coredns"
CRICTL_BIN="$ART/crictl-$CRICTL_VERSION/crictl"
build_extras() {
  log "etcd $ETCD_MODULE_VERSION"
  ETCD_BIN="$ART/etcd-$ETCD_MODULE_VERSION/etcd"
  if [ -x "$ETCD_BIN" ]; then log "cached"; else
    src="$CACHE/src/etcd-$ETCD_MODULE_VERSION"; mkdir -p "$src" "$(dirname "$ETCD_BIN")"
    printf 'module devloop.local/e2e/etcdbuild\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_MODULE_VERSION" >"$src/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$src/tools.go"
    (cd "$src" && go mod tidy && CGO_ENABLED=0 go build -trimpath \
       -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=devloop" -o "$ETCD_BIN.tmp" go.etcd.io/etcd/server/v3) \
      >"$LOGS/etcd-build.log" 2>&1 || { tail -30 "$LOGS/etcd-build.log"; die "etcd build failed"; }
    mv "$ETCD_BIN.tmp" "$ETCD_BIN"
  fi

  go_install() { # name module@version out [ldflags]
    local name=$1 mod=$2 out=$3 ld=${4:-"-s -w"} tmp="$WORK/gobin-$1"
    if [ -x "$out" ]; then log "cached"; return; fi
    rm -rf "$tmp"; mkdir -p "$tmp" "$(dirname "$out")"
    (cd /tmp && CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "$ld" "$mod") \
      >"$LOGS/$name-build.log" 2>&1 || { tail -30 "$LOGS/$name-build.log"; die "$name build failed"; }
    mv "$tmp/$name" "$out"; rm -rf "$tmp"
  }
  log "coredns $COREDNS_VERSION"
  COREDNS_BIN="$ART/coredns-$COREDNS_VERSION/coredns"
  go_install coredns "github.com/coredns/coredns@$COREDNS_VERSION" "$COREDNS_BIN"
  log "crictl $CRICTL_VERSION"
  CRICTL_BIN="$ART/crictl-$CRICTL_VERSION/crictl"
  go_install crictl "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" "$CRICTL_BIN" \
    "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
}
EXTRAS_PID=""
if [ -x "$ETCD_BIN" ] && [ -x "$COREDNS_BIN" ] && [ -x "$CRICTL_BIN" ]; then
  log "etcd, coredns, crictl: cached"
else
  log "etcd, coredns, crictl: building in background (log: $LOGS/extras-build.log)"
  build_extras >"$LOGS/extras-build.log" 2>&1 &
  EXTRAS_PID=$!
fi

# ---- 5. Kubernetes binaries ------------------------------------------------------------------
K8S_BINS="kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy"
K8S_OUT="$ART/kubernetes-$K8S_VERSION"
step "kubernetes $K8S_VERSION binaries"
missing=0; for b in $K8S_BINS; do [ -x "$K8S_OUT/$b" ] || missing=1; done
if [ $missing = 0 ]; then
  log "cached in $K8S_OUT"
else
  src="$CACHE/src/kubernetes-$K8S_VERSION"; mkdir -p "$src"
  staging=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$K8S_DIR/go.mod")
  {
    echo "module devloop.local/e2e/k8sbuild"; echo
    echo "go $(sed -n 's/^go //p' "$K8S_DIR/go.mod")"; echo
    sed -n '/^godebug/p' "$K8S_DIR/go.mod"; echo
    echo "require k8s.io/kubernetes $K8S_VERSION"; echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m v0.${K8S_VERSION#v1.}"; done
    echo ")"
  } >"$src/go.mod"
  {
    echo "//go:build tools"; echo; echo "package tools"; echo; echo "import ("
    for b in $K8S_BINS; do echo "	_ \"k8s.io/kubernetes/cmd/$b\""; done
    echo ")"
  } >"$src/tools.go"
  (cd "$src" && go mod tidy) >"$LOGS/k8s-tidy.log" 2>&1 || { tail -20 "$LOGS/k8s-tidy.log"; die "go mod tidy (kubernetes) failed"; }
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  ld="-s -w"
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ld="$ld -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$K8S_OUT.tmp"
  pkgs=(); for b in $K8S_BINS; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  log "go build ${K8S_BINS} (cold: 10-25 min on 2 cores; log: $LOGS/k8s-build.log)"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$K8S_OUT.tmp/" "${pkgs[@]}") \
    >"$LOGS/k8s-build.log" 2>&1 || { tail -30 "$LOGS/k8s-build.log"; die "kubernetes build failed"; }
  rm -rf "$K8S_OUT"; mv "$K8S_OUT.tmp" "$K8S_OUT"
fi
"$K8S_OUT/kubeadm" version -o short | grep -qx "$K8S_VERSION" || die "kubeadm reports $("$K8S_OUT/kubeadm" version -o short), want $K8S_VERSION"
cp -f "$K8S_OUT/kubectl" "$CACHE/bin/kubectl"
log "kubectl $K8S_VERSION copied to $CACHE/bin/kubectl"

step "wait for etcd/coredns/crictl"
if [ -n "$EXTRAS_PID" ]; then
  wait "$EXTRAS_PID" || { tail -30 "$LOGS/extras-build.log" >&2; die "etcd/coredns/crictl build failed (log: $LOGS/extras-build.log)"; }
fi

# image names exactly as kubeadm lists them
mapfile -t KUBEADM_IMAGES < <("$K8S_OUT/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null)
[ "${#KUBEADM_IMAGES[@]}" -ge 7 ] || die "unexpected 'kubeadm config images list' output: ${KUBEADM_IMAGES[*]}"
image_for() { local i; for i in "${KUBEADM_IMAGES[@]}"; do case "${i%:*}" in */"$1") echo "$i"; return;; esac; done; die "no kubeadm image for $1"; }
PAUSE_IMAGE="$(image_for pause)"
PAUSE_VERSION="${PAUSE_IMAGE##*:}"

step "pause $PAUSE_VERSION (gcc -static)"
PAUSE_BIN="$ART/pause-$PAUSE_VERSION/pause"
if [ -x "$PAUSE_BIN" ]; then log "cached"; else
  mkdir -p "$(dirname "$PAUSE_BIN")"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-devloop" -o "$PAUSE_BIN.tmp" "$K8S_DIR/build/pause/linux/pause.c"
  strip "$PAUSE_BIN.tmp"; mv "$PAUSE_BIN.tmp" "$PAUSE_BIN"
fi

# ---- 6. wait for the root filesystems --------------------------------------------------------
step "wait for debootstrap"
for pn in "${ROOTFS_PIDS[@]}"; do
  pid=${pn%%:*}; n=${pn#*:}
  if ! wait "$pid"; then tail -30 "$LOGS/debootstrap-$n.log" >&2; die "debootstrap $n failed (log: $LOGS/debootstrap-$n.log)"; fi
  tail -1 "$LOGS/debootstrap-$n.log" >&2
done

# From here on we create docker images/containers: remove the temporary ones on exit.
TMP_TAG="devloop-test/tmp-build-$RECIPE"
TMP_IMAGES=()
BUILD_CTR=""
cleanup() {
  kill_jobs
  [ -z "$BUILD_CTR" ] || docker rm -f "$BUILD_CTR" >/dev/null 2>&1 || true
  if [ "${#TMP_IMAGES[@]}" -gt 0 ]; then docker rmi -f "${TMP_IMAGES[@]}" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK/images" "$WORK/node-root"
}
trap cleanup EXIT

# ---- 7. control-plane images -----------------------------------------------------------------
step "control-plane images (FROM scratch / minimal rootfs)"
IMG="$WORK/images"; rm -rf "$IMG"; mkdir -p "$IMG"
docker import "$PROXY_TAR" "$TMP_TAG:kube-proxy-base" >/dev/null
TMP_IMAGES+=("$TMP_TAG:kube-proxy-base")
# Images are built under temporary docker tags ($TMP_TAG:<component>) and get their kubeadm names
# only inside the node's containerd, so no registry.k8s.io/* tag is ever created in (or removed
# from) the host's docker.
IMAGE_MAP=()   # "temporary tag|kubeadm name"
mk_image() { # context-dir component
  local tag="$TMP_TAG:$2"
  # (the classic builder's deprecation notice on stderr is dropped unless the build fails)
  docker build -q -t "$tag" "$1" >/dev/null 2>"$WORK/docker-build.err" || { cat "$WORK/docker-build.err" >&2; die "docker build $2 failed"; }
  TMP_IMAGES+=("$tag"); IMAGE_MAP+=("$tag|$(image_for "$2")")
}
scratch_ctx() { # dir binary... ; Dockerfile with PATH and binaries in /usr/local/bin
  local d=$1; shift; mkdir -p "$d"
  { echo "FROM scratch"; echo "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    for b in "$@"; do cp "$b" "$d/"; echo "COPY $(basename "$b") /usr/local/bin/$(basename "$b")"; done; } >"$d/Dockerfile"
}
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  scratch_ctx "$IMG/$c" "$K8S_OUT/$c"
  echo "ENTRYPOINT [\"/usr/local/bin/$c\"]" >>"$IMG/$c/Dockerfile"
  mk_image "$IMG/$c" "$c"
done
scratch_ctx "$IMG/etcd" "$ETCD_BIN"; echo 'ENTRYPOINT ["/usr/local/bin/etcd"]' >>"$IMG/etcd/Dockerfile"
mk_image "$IMG/etcd" etcd
mkdir -p "$IMG/coredns"; cp "$COREDNS_BIN" "$IMG/coredns/"
printf 'FROM scratch\nCOPY coredns /coredns\nEXPOSE 53 53/udp\nENTRYPOINT ["/coredns"]\n' >"$IMG/coredns/Dockerfile"
mk_image "$IMG/coredns" coredns
mkdir -p "$IMG/pause"; cp "$PAUSE_BIN" "$IMG/pause/"
printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$IMG/pause/Dockerfile"
mk_image "$IMG/pause" pause
mkdir -p "$IMG/kube-proxy"; cp "$K8S_OUT/kube-proxy" "$HERE/node/iptables-wrapper" "$IMG/kube-proxy/"
cat >"$IMG/kube-proxy/Dockerfile" <<EOF
FROM $TMP_TAG:kube-proxy-base
COPY kube-proxy /usr/local/bin/kube-proxy
COPY iptables-wrapper /usr/sbin/iptables-wrapper
RUN for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \\
      ln -sf /usr/sbin/iptables-wrapper /usr/sbin/\$t; done
ENTRYPOINT ["/usr/local/bin/kube-proxy"]
EOF
mk_image "$IMG/kube-proxy" kube-proxy
[ "${#IMAGE_MAP[@]}" = "${#KUBEADM_IMAGES[@]}" ] || die "built ${#IMAGE_MAP[@]} images, kubeadm lists ${#KUBEADM_IMAGES[@]}: ${KUBEADM_IMAGES[*]}"
printf '%s\n' "${IMAGE_MAP[@]}" >"$IMG/image-map"
tags=(); for m in "${IMAGE_MAP[@]}"; do tags+=("${m%%|*}"); done
docker save -o "$IMG/images.tar" "${tags[@]}"
log "images: ${KUBEADM_IMAGES[*]} ($(du -h "$IMG/images.tar" | cut -f1))"

# ---- 8. node root filesystem -----------------------------------------------------------------
step "assemble node rootfs"
R="$WORK/node-root"; rm -rf "$R"; mkdir -p "$R"
tar -C "$R" --numeric-owner -xf "$NODE_TAR"
F="$KIND_DIR/images/base/files"
install -d -m 0755 "$R/kind" "$R/kind/bin" "$R/kind/manifests" "$R/etc/containerd" "$R/etc/default" \
  "$R/etc/sysctl.d" "$R/etc/systemd/system/kubelet.service.d" "$R/etc/kubernetes/manifests" \
  "$R/opt/cni/bin" "$R/etc/cni/net.d" "$R/usr/local/bin"
install -m 0755 "$F"/usr/local/bin/* "$R/usr/local/bin/"
install -m 0644 "$F"/kind/README.txt "$R/kind/"
install -m 0755 "$F"/kind/bin/* "$R/kind/bin/"
install -m 0644 "$F"/etc/crictl.yaml "$R/etc/"
install -m 0644 "$F"/etc/containerd/* "$R/etc/containerd/"
install -m 0644 "$F"/etc/default/* "$R/etc/default/"
install -m 0644 "$F"/etc/sysctl.d/* "$R/etc/sysctl.d/"
find "$F/etc/systemd/system" -maxdepth 1 -type f -exec install -m 0644 {} "$R/etc/systemd/system/" \;
install -m 0644 "$F"/etc/systemd/system/kubelet.service.d/* "$R/etc/systemd/system/kubelet.service.d/"
# same systemd trimming as kind's base Dockerfile
find "$R/lib/systemd/system/sysinit.target.wants/" -name "systemd-tmpfiles-setup.service" -delete
rm -f "$R"/lib/systemd/system/multi-user.target.wants/* "$R"/etc/systemd/system/*.wants/* \
      "$R"/lib/systemd/system/local-fs.target.wants/* "$R"/lib/systemd/system/sockets.target.wants/*udev* \
      "$R"/lib/systemd/system/sockets.target.wants/*initctl* "$R"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$R/etc/systemd/journald.conf"
ln -sf /lib/systemd/systemd "$R/sbin/init"
# Debian's containerd lives in /usr/bin; kind's unit runs /usr/local/bin/containerd
for b in containerd containerd-shim-runc-v2 ctr; do ln -sf "/usr/bin/$b" "$R/usr/local/bin/$b"; done
for p in "$R"/usr/lib/cni/*; do ln -sf "/usr/lib/cni/$(basename "$p")" "$R/opt/cni/bin/"; done
# kubernetes + tools
install -m 0755 "$K8S_OUT/kubeadm" "$K8S_OUT/kubelet" "$K8S_OUT/kubectl" "$R/usr/bin/"
install -m 0755 "$CRICTL_BIN" "$R/usr/local/bin/crictl"
install -m 0755 "$HERE/node/devloop-node-prep" "$R/usr/local/bin/devloop-node-prep"
# pod network: no static CNI config; devloop-cni.service writes it from the node's podCIDR
install -m 0755 "$HERE/node/devloop-cni" "$R/usr/local/bin/devloop-cni"
install -m 0644 "$HERE/node/devloop-cni.service" "$R/etc/systemd/system/devloop-cni.service"
echo "$K8S_VERSION" >"$R/kind/version"
install -m 0644 "$HERE/node/default-cni.yaml" "$R/kind/manifests/default-cni.yaml"
# sandbox image = the pause image kubeadm lists (and we preload)
sed -i "s#sandbox_image = .*#sandbox_image = \"$PAUSE_IMAGE\"#" "$R/etc/containerd/config.toml"
grep -q "sandbox_image = \"$PAUSE_IMAGE\"" "$R/etc/containerd/config.toml" || die "could not set sandbox_image"
# base runtime spec, as kind's Dockerfile generates it
chroot "$R" ctr oci spec \
  | chroot "$R" jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
  | chroot "$R" jq 'del(.process.rlimits)' >"$R/etc/containerd/cri-base.json"
chroot "$R" systemctl enable kubelet.service containerd.service undo-mount-hacks.service devloop-cni.service >/dev/null 2>&1
chroot "$R" systemctl mask systemd-binfmt.service >/dev/null 2>&1
for u in kubelet containerd undo-mount-hacks devloop-cni; do
  [ -L "$R/etc/systemd/system/multi-user.target.wants/$u.service" ] || die "systemctl enable $u failed"
done
rm -f "$R/etc/machine-id" "$R/var/lib/dbus/machine-id"; : >"$R/etc/machine-id"

step "docker import node base"
tar -C "$R" --numeric-owner -c . | docker import \
  --change 'ENV container=docker' \
  --change 'ENTRYPOINT ["/usr/local/bin/devloop-node-prep", "/usr/local/bin/entrypoint", "/sbin/init"]' \
  - "$TMP_TAG:node-base" >/dev/null
TMP_IMAGES+=("$TMP_TAG:node-base")
rm -rf "$R"

# ---- 9. preload images into the node's containerd and commit --------------------------------
step "preload images into node containerd (k8s.io) + docker commit"
cat >"$IMG/containerd-import.toml" <<'EOF'
version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "/run/containerd/containerd.sock"
EOF
BUILD_CTR="devloop-kind-node-build-$RECIPE"
docker rm -f "$BUILD_CTR" >/dev/null 2>&1 || true
docker run -d --name "$BUILD_CTR" --entrypoint /bin/sleep \
  -v "$IMG:/devloop-images:ro" "$TMP_TAG:node-base" infinity >/dev/null
docker exec "$BUILD_CTR" bash -c '
  set -euo pipefail
  mkdir -p /run/containerd
  containerd --config /devloop-images/containerd-import.toml >/tmp/containerd.log 2>&1 &
  cpid=$!
  for i in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
  ctr -n k8s.io images import --no-unpack /devloop-images/images.tar >/dev/null
  while IFS="|" read -r tmp name; do
    src=$(ctr -n k8s.io images list -q | grep -E "^(docker.io/)?${tmp}\$")
    ctr -n k8s.io images tag --force "$src" "$name" >/dev/null
    ctr -n k8s.io images rm "$src" >/dev/null
    ctr -n k8s.io images label "$name" io.cri-containerd.pinned=pinned >/dev/null || true
  done </devloop-images/image-map
  ctr -n k8s.io images list -q
  kill $cpid; wait $cpid || true
  rm -rf /run/containerd /tmp/* /var/log/*
' >&2 || { docker logs "$BUILD_CTR" >&2 || true; die "containerd image import failed"; }
docker stop -t 1 "$BUILD_CTR" >/dev/null
docker commit "$BUILD_CTR" "$TMP_TAG:node-committed" >/dev/null
TMP_IMAGES+=("$TMP_TAG:node-committed")
docker rm -f "$BUILD_CTR" >/dev/null; BUILD_CTR=""
# final metadata (docker import/commit --change cannot set STOPSIGNAL); no filesystem change
mkdir -p "$WORK/final"
cat >"$WORK/final/Dockerfile" <<EOF
FROM $TMP_TAG:node-committed
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/devloop-node-prep", "/usr/local/bin/entrypoint", "/sbin/init"]
CMD []
LABEL devloop.kind-node.recipe="$RECIPE" devloop.kind-node.kubernetes="$K8S_VERSION"
EOF
OLD_ID="$(docker image inspect -f '{{.Id}}' "$NODE_IMAGE" 2>/dev/null || true)"
docker build -q -t "$NODE_IMAGE" "$WORK/final" >/dev/null 2>"$WORK/docker-build.err" || { cat "$WORK/docker-build.err" >&2; die "final docker build failed"; }
rm -rf "$WORK/final"
NEW_ID="$(docker image inspect -f '{{.Id}}' "$NODE_IMAGE")"
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then
  docker rmi "$OLD_ID" >/dev/null 2>&1 || log "note: previous $NODE_IMAGE ($OLD_ID) still in use, not removed"
fi
step "cleanup temporary images"
cleanup; TMP_IMAGES=()
log "built $NODE_IMAGE ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
summary
echo "$NODE_IMAGE"
exit 0
}
