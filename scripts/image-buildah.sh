#!/usr/bin/env bash
# buildah on the image store that scripts/build-image.sh builds into, so the built image can be run and
# inspected with the same settings (tests/test_image.py does):
#
#   scripts/image-buildah.sh images
#   ctr=$(scripts/image-buildah.sh from localhost/deid-sidecar:cpu)
#   scripts/image-buildah.sh run --isolation chroot --network host --user 10001:10001 "$ctr" -- deid-sidecar models list
#   scripts/image-buildah.sh rm "$ctr"
#
# A store of its own (vfs: plain directories, no overlay mounts or fuse needed) under DEID_IMAGE_CACHE
# (default /var/cache/deid-sidecar-image), so it never mixes with the machine's default containers store.
# The run root (locks, mount state) lies under /run, which starts empty after a reboot.
set -euo pipefail

cache="${DEID_IMAGE_CACHE:-/var/cache/deid-sidecar-image}"
if ! command -v buildah >/dev/null 2>&1; then
  echo "image-buildah: buildah is not installed (apt-get install buildah debootstrap; scripts/setup.sh test does)" >&2
  exit 127
fi
exec buildah --root "$cache/storage" --runroot "${DEID_IMAGE_RUNROOT:-/run/deid-sidecar-image}" \
  --storage-driver vfs "$@"
