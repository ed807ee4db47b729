#!/usr/bin/env bash
# Idempotent set-up shared by scripts/demo and scripts/test: system packages, .venv, models, media.
# Usage: scripts/setup.sh [runtime|test]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-runtime}"

apt_runtime=(ffmpeg)
apt_test=(mosquitto gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-tools gstreamer1.0-plugins-base
          gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
          chromium chromium-driver buildah debootstrap iproute2)
wanted=("${apt_runtime[@]}")
[ "$profile" = test ] && wanted+=("${apt_test[@]}")

missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
extras="cpu"
[ "$profile" = test ] && extras="cpu,dev"
# Reinstall only when the project metadata changed since the last set-up.
stamp=.venv/.deid-setup-$profile
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing deid-sidecar[$extras] into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi

if [ "$profile" = test ]; then
  scripts/setup-ha.sh   # a real Home Assistant in its own .venv-ha, for tests/test_home_assistant.py
fi

.venv/bin/deid-sidecar models fetch
.venv/bin/deid-sidecar media fetch
