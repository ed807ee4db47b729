#!/usr/bin/env bash
# Build the CPU container image from the repository's Dockerfile without a Docker engine: buildah with
# vfs storage, chroot isolation and the host's network (what CI does, through tests/test_image.py).
# Users with Docker run `docker build -t deid-sidecar:cpu .` on the same Dockerfile instead.
#
# Usage: scripts/build-image.sh [TAG]            (default localhost/deid-sidecar:cpu)
#
# Steps, each skipped when its result is already there (a second run with no change takes seconds):
#   1. the Python base image (stand-in for python:3.11-slim, which needs Docker Hub): a Debian minbase
#      made with debootstrap from the mirror this machine's apt uses, with python3, venv and the host's
#      CA certificates (the build's pip reaches PyPI through the same network as the host's). Cached as a
#      tarball and as localhost/deid-pybase:<suite>; rebuilt only when its recipe changes.
#   2. a loopback-only pip index with this machine's CPU torch wheel, when the models include
#      yolov8n-plate (its ONNX export needs torch at fetch time, inside the image build; PyPI's torch is
#      the multi-GB CUDA build and download.pytorch.org is not reachable here).
#   3. `buildah bud` of the Dockerfile, VARIANT=cpu, labelled with a digest of the build context and
#      arguments: an image with the same digest is reused, not rebuilt.
#
# Environment:
#   DEID_IMAGE_CACHE        cache and image store (default /var/cache/deid-sidecar-image)
#   DEID_IMAGE_MODELS       model ids to bake in (default: the Dockerfile's MODELS)
#   DEID_IMAGE_PYTHON_BASE  use this Python base image instead of making one (e.g. python:3.11-slim-bookworm)
#   DEID_IMAGE_TORCH_INDEX  extra pip index with a CPU torch (e.g. https://download.pytorch.org/whl/cpu)
#                           instead of serving the local wheel
#   DEID_IMAGE_REBUILD=1    build even when an image with the same context digest exists
# Needs root (debootstrap, chroot) and Debian's buildah and debootstrap (scripts/setup.sh test).
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-${DEID_IMAGE_TAG:-localhost/deid-sidecar:cpu}}"
cache="${DEID_IMAGE_CACHE:-/var/cache/deid-sidecar-image}"
export DEID_IMAGE_CACHE="$cache"
ib=(scripts/image-buildah.sh)
#: Bump to rebuild every cached base image (the recipe below changed in a way the hash cannot see).
BASE_RECIPE_VERSION=1
BASE_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates"
started=$SECONDS

say() { printf 'build-image: %s\n' "$*"; }
die() {
  printf 'build-image: error: %s\n' "$*" >&2
  exit 1
}
took() { printf '%d s' $((SECONDS - $1)); }

for tool in buildah python3; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "$tool is not installed: apt-get install buildah debootstrap (scripts/setup.sh test installs them)"
done
[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap, chroot and buildah's chroot isolation need it"
mkdir -p "$cache"

label() { # label IMAGE KEY: the image's label, or nothing when the image or the label is missing
  "${ib[@]}" inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

# --- 1. the Python base image ------------------------------------------------------------------------

apt_sources() {
  # "MIRROR" on the first line, then sources.list lines for the base, from this machine's apt sources
  # (one-line .list files and deb822 .sources files): the network here reaches only those mirrors.
  python3 - "$1" <<'PY'
import glob, re, sys
suite = sys.argv[1]
entries = []  # (uri, suites, components)
for path in sorted(glob.glob("/etc/apt/sources.list") + glob.glob("/etc/apt/sources.list.d/*.list")):
    for line in open(path, encoding="utf-8", errors="replace"):
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        words = words[1:]
        if words[0].startswith("["):  # [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            entries.append((words[0], [words[1]], words[2:]))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    text = open(path, encoding="utf-8", errors="replace").read()
    for stanza in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            entries.append((uri, fields.get("suites", "").split(), fields.get("components", "").split()))
main = next((e for e in entries if suite in e[1] and "main" in e[2]), None)
if main is None:
    sys.exit(f"no 'deb ... {suite} main' entry in /etc/apt/sources.list(.d)")
print(main[0])
print(f"deb {main[0]} {suite} main")
for wanted in (f"{suite}-updates", f"{suite}-security"):
    extra = next((e for e in entries if wanted in e[1] and "main" in e[2]), None)
    if extra:
        print(f"deb {extra[0]} {wanted} main")
PY
}

unmount_below() { # unmount whatever an interrupted debootstrap left mounted under $1
  local target
  while read -r target; do umount -l "$target" 2>/dev/null || true; done < <(
    findmnt -rn -o TARGET | awk -v root="$1/" 'index($0, root) == 1' | sort -r
  )
}

make_base_tarball() { # make_base_tarball SUITE MIRROR SOURCES TARBALL
  local suite="$1" mirror="$2" sources="$3" tarball="$4" rootfs="$cache/rootfs.partial" t
  command -v debootstrap >/dev/null 2>&1 ||
    die "debootstrap is not installed: apt-get install buildah debootstrap (scripts/setup.sh test installs them)"
  if [ -e "$rootfs" ]; then
    unmount_below "$rootfs"
    rm -rf --one-file-system "$rootfs"
  fi
  t=$SECONDS
  say "debootstrap --variant=minbase $suite from $mirror (with $BASE_PACKAGES)"
  if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$suite" "$rootfs" "$mirror" \
    >"$cache/debootstrap.log" 2>&1; then
    tail -n 20 "$cache/debootstrap.log" >&2
    die "debootstrap failed (full log: $cache/debootstrap.log)"
  fi
  say "debootstrap done in $(took "$t")"
  printf '%s\n' "$sources" >"$rootfs/etc/apt/sources.list"
  # The host's extra CA certificates: pip inside the image build reaches PyPI through this network.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  chroot "$rootfs" update-ca-certificates >/dev/null
  chroot "$rootfs" apt-get clean
  # What python:3.11-slim leaves out too: package lists, logs, caches.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/* \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/root/.cache
  tar --numeric-owner --xattrs -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  rm -rf --one-file-system "$rootfs"
}

import_base() { # import_base TARBALL IMAGE RECIPE
  local ctr mnt python
  ctr=$("${ib[@]}" from scratch)
  mnt=$("${ib[@]}" mount "$ctr")
  tar --numeric-owner --xattrs -C "$mnt" -xf "$1"
  python=$(chroot "$mnt" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  "${ib[@]}" umount "$ctr" >/dev/null
  "${ib[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd '["python3"]' \
    --label "io.deid-sidecar.base-recipe=$3" --label "io.deid-sidecar.python=$python" "$ctr"
  "${ib[@]}" commit --quiet --rm "$ctr" "$2" >/dev/null
}

if [ -n "${DEID_IMAGE_PYTHON_BASE:-}" ]; then
  base="$DEID_IMAGE_PYTHON_BASE"
  base_python=""
  say "Python base: $base (DEID_IMAGE_PYTHON_BASE)"
else
  suite="${DEID_IMAGE_SUITE:-$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)}"
  [ -n "$suite" ] || die "cannot tell this machine's Debian suite from /etc/os-release; set DEID_IMAGE_SUITE"
  sources="$(apt_sources "$suite")" || die "cannot find a Debian mirror for $suite in this machine's apt sources"
  mirror="$(head -n 1 <<<"$sources")"
  sources="$(tail -n +2 <<<"$sources")"
  base="localhost/deid-pybase:$suite"
  recipe="$({
    echo "$BASE_RECIPE_VERSION $suite $mirror $BASE_PACKAGES"
    echo "$sources"
    cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
  } | sha256sum | cut -c1-16)"
  tarball="$cache/pybase-$suite-$recipe.tar"
  t=$SECONDS
  if [ "$(label "$base" io.deid-sidecar.base-recipe)" = "$recipe" ]; then
    say "Python base: $base is current (recipe $recipe), reused"
  else
    if [ -f "$tarball" ]; then
      say "Python base: reusing the cached root file system $tarball"
    else
      say "Python base: making $base (recipe $recipe)"
      make_base_tarball "$suite" "$mirror" "$sources" "$tarball"
      find "$cache" -maxdepth 1 -name "pybase-$suite-*.tar" ! -name "$(basename "$tarball")" -delete
    fi
    "${ib[@]}" rmi --force "$base" >/dev/null 2>&1 || true
    import_base "$tarball" "$base" "$recipe"
    say "Python base: $base ready in $(took "$t")"
  fi
  base_python="$(label "$base" io.deid-sidecar.python)"
fi

# --- 2. a CPU torch for the yolov8n-plate export --------------------------------------------------------

models="${DEID_IMAGE_MODELS:-$(sed -n 's/^ARG MODELS="\(.*\)"$/\1/p' Dockerfile)}"
[ -n "$models" ] || die "no ARG MODELS=\"...\" default in the Dockerfile and DEID_IMAGE_MODELS is not set"
torch_index="${DEID_IMAGE_TORCH_INDEX:-}"
index_pid=""
cleanup() { [ -z "$index_pid" ] || kill "$index_pid" 2>/dev/null || true; }
trap cleanup EXIT
# Models whose fetch exports a checkpoint with torch (registry: Conversion.YOLO_EXPORT).
if [[ " $models " == *" yolov8n-plate "* ]] && [ -z "$torch_index" ]; then
  torch_version="$(sed -n 's/^TORCH_PIN = "torch==\(.*\)"$/\1/p' deid_sidecar/models/convert.py)"
  [ -n "$torch_version" ] || die "cannot read TORCH_PIN from deid_sidecar/models/convert.py"
  wheels="$cache/torch-cpu"
  mkdir -p "$wheels"
  wheel="$(find "$wheels" -maxdepth 1 -name "torch-$torch_version+cpu-*.whl" | head -n 1)"
  if [ -z "$wheel" ]; then
    say "yolov8n-plate: getting the CPU wheel torch==$torch_version+cpu with this machine's pip"
    python_version=()
    [ -z "$base_python" ] || python_version=(--python-version "$base_python")
    python3 -m pip download --quiet --no-deps --only-binary :all: "${python_version[@]}" --dest "$wheels" \
      "torch==$torch_version+cpu" ||
      die "no CPU wheel torch==$torch_version+cpu for this machine's pip; set DEID_IMAGE_TORCH_INDEX to an" \
        "index that has one, or DEID_IMAGE_MODELS to models without yolov8n-plate (e.g. centerface retina-plate)"
    wheel="$(find "$wheels" -maxdepth 1 -name "torch-$torch_version+cpu-*.whl" | head -n 1)"
  fi
  # A PEP 503 index with only that wheel, served on loopback for the build's `pip install torch==...`:
  # pip prefers 2.x+cpu over PyPI's CUDA 2.x (a local version label sorts after the public one).
  index="$cache/torch-index"
  rm -rf "$index" && mkdir -p "$index/simple/torch"
  ln -s "$wheel" "$index/simple/torch/$(basename "$wheel")"
  printf '<!DOCTYPE html><html><body><a href="%s#sha256=%s">%s</a></body></html>\n' \
    "$(basename "$wheel" | sed 's/+/%2B/')" "$(sha256sum "$wheel" | cut -d' ' -f1)" "$(basename "$wheel")" \
    >"$index/simple/torch/index.html"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  python3 -m http.server --bind 127.0.0.1 --directory "$index" "$port" >"$cache/torch-index.log" 2>&1 &
  index_pid=$!
  for _ in $(seq 50); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/simple/torch/', timeout=1)" \
      2>/dev/null && break
    sleep 0.1
  done
  torch_index="http://127.0.0.1:$port/simple"
  say "yolov8n-plate: serving $(basename "$wheel") to the build at $torch_index"
fi

# --- 3. the image ----------------------------------------------------------------------------------------

build_args=(--build-arg VARIANT=cpu --build-arg "PYTHON_IMAGE=$base" --build-arg "MODELS=$models")
# The index URL changes with the port: the digest records only whether a local wheel was used.
digest_args="VARIANT=cpu PYTHON_IMAGE=$base@$("${ib[@]}" inspect --type image --format '{{.FromImageID}}' "$base" 2>/dev/null || echo "$base") MODELS=$models TORCH=${DEID_IMAGE_TORCH_INDEX:-local}"
# The context is what .dockerignore lets through: it is an allow-list (`*`, then `!path`), so the
# digest covers the Dockerfile, .dockerignore and every `!` path (minus bytecode).
context="$(python3 - "$digest_args" <<'PY'
import hashlib, sys
from pathlib import Path
digest = hashlib.sha256(sys.argv[1].encode())
roots = ["Dockerfile", ".dockerignore"]
for line in Path(".dockerignore").read_text(encoding="utf-8").splitlines():
    line = line.strip()
    if line.startswith("!"):
        roots.append(line[1:].rstrip("/"))
for root in roots:
    path = Path(root)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if "__pycache__" in file.parts or file.suffix == ".pyc":
            continue
        digest.update(f"\0{file.as_posix()}\0{file.stat().st_mode & 0o111}\0".encode())
        digest.update(file.read_bytes())
print(digest.hexdigest()[:16])
PY
)"
if [ "${DEID_IMAGE_REBUILD:-0}" != 1 ] && [ "$(label "$tag" io.deid-sidecar.context)" = "$context" ]; then
  say "image: $tag is current (context $context), reused; DEID_IMAGE_REBUILD=1 builds it again"
else
  t=$SECONDS
  say "image: buildah bud -t $tag (VARIANT=cpu, MODELS=\"$models\", context $context); log: $cache/build.log"
  before="$("${ib[@]}" containers --all --quiet --notruncate)"
  # --format docker keeps the HEALTHCHECK (the OCI format has none). No --layers: the package is copied
  # before every install step, so a source change rebuilds them all anyway, and vfs layers cost copies.
  # --jobs 2: the venv and models stages download and install at the same time.
  status=0
  "${ib[@]}" bud --isolation chroot --network host --pull=false --format docker --jobs 2 \
    "${build_args[@]}" --build-arg "TORCH_INDEX_URL=$torch_index" \
    --label "io.deid-sidecar.context=$context" -t "$tag" -f Dockerfile . >"$cache/build.log" 2>&1 || status=$?
  # buildah 1.28 leaves the working containers of stages that others copy from: remove what this build
  # made, then the images nothing names any more (the stages', and the one this tag named before).
  while read -r ctr; do
    [ -z "$ctr" ] || grep -qxF "$ctr" <<<"$before" || "${ib[@]}" rm "$ctr" >/dev/null 2>&1 || true
  done < <("${ib[@]}" containers --all --quiet --notruncate)
  "${ib[@]}" rmi --prune >/dev/null 2>&1 || true
  if [ "$status" -ne 0 ]; then
    tail -n 30 "$cache/build.log" >&2
    die "buildah bud failed after $(took "$t") (full log: $cache/build.log)"
  fi
  say "image: built in $(took "$t")"
fi
size="$("${ib[@]}" images --format '{{.Size}}' "$tag" | head -n 1)"
say "done in $(took "$started"): $tag, $size"
