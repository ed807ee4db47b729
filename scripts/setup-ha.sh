#!/usr/bin/env bash
# Home Assistant for tests/test_home_assistant.py: a pinned release in its own venv, .venv-ha (gitignored),
# beside the project's .venv. Idempotent: with the pinned set installed it only checks, in a second or two.
#
# Which release: the newest `homeassistant` whose Requires-Python admits a Python this machine has.
# 2025.5.0 to 2026.2.x need Python >= 3.13.2 and 2026.3.0 on >= 3.14.2; pyenv has 3.13.0 here, so 2025.4.4
# (Requires-Python >= 3.13.0) is the newest that runs. A Python >= 3.13 is looked for in HA_PYTHON, pyenv's
# versions, then python3.14 / python3.13 / python3 on PATH; none: the script fails and says so.
#
# Requirements HA would otherwise pip-install at run time are installed here, under HA's own
# package_constraints.txt, and the test starts `hass --skip-pip`: nothing is fetched while it runs.
#   home-assistant-frontend  frontend (always set up, and it pulls in onboarding, config, person, ...)
#   pyotp, PyQRCode          auth's TOTP/notify MFA modules, set up with the auth providers
#   paho-mqtt                the MQTT integration (components/mqtt/manifest.json)
# The installer is uv, at the release HA 2025.4.4 itself requires (twice as fast as pip here, cold).
set -euo pipefail
cd "$(dirname "$0")/.."

HA_VERSION=2025.4.4
HA_MIN_PYTHON=3.13.0
HA_REQUIREMENTS=(home-assistant-frontend==20250411.0 pyotp==2.8.0 PyQRCode==1.2.1 paho-mqtt==2.1.0)
UV_VERSION=0.6.10
venv=.venv-ha
stamp="$venv/.deid-ha-setup"
wanted="homeassistant==$HA_VERSION ${HA_REQUIREMENTS[*]} uv==$UV_VERSION"

say() { echo "setup-ha: $*"; }

# Quiet pip/uv output: this machine's pip.conf names local indexes that may be absent.
quiet() {
  local rc=0
  "$@" 2> >(grep -v -e "is ignored: it is neither a file nor a directory" >&2) || rc=$?
  return "$rc"
}

python_ok() {  # python_ok PYTHON: a Python >= HA_MIN_PYTHON
  "$1" -c "import sys; sys.exit(0 if sys.version_info[:3] >= tuple(map(int, '$HA_MIN_PYTHON'.split('.'))) else 1)" \
    >/dev/null 2>&1
}

find_python() {
  local candidates=()
  [ -n "${HA_PYTHON:-}" ] && candidates+=("$HA_PYTHON")
  local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  local dir
  for root in "$pyenv_root" /root/.pyenv; do
    [ -d "$root/versions" ] || continue
    # Newest first: 3.14.x before 3.13.x, 3.13.10 before 3.13.9.
    while IFS= read -r dir; do
      for exe in "$dir"/bin/python3.1[3-9]; do
        [ -x "$exe" ] && candidates+=("$exe")
      done
    done < <(find "$root/versions" -mindepth 1 -maxdepth 1 -name '3.1[3-9]*' 2>/dev/null | sort -rV)
  done
  for name in python3.14 python3.13 python3; do
    command -v "$name" >/dev/null 2>&1 && candidates+=("$(command -v "$name")")
  done
  for exe in "${candidates[@]}"; do
    if python_ok "$exe"; then
      echo "$exe"
      return 0
    fi
  done
  return 1
}

installed_ok() {
  [ -x "$venv/bin/hass" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] \
    && "$venv/bin/python" -c "import homeassistant.const as c, paho.mqtt, hass_frontend; \
assert c.__version__ == '$HA_VERSION', c.__version__" >/dev/null 2>&1
}

if installed_ok; then
  say "Home Assistant $HA_VERSION is installed in $venv"
  exit 0
fi

if [ -x "$venv/bin/python" ] && ! python_ok "$venv/bin/python"; then
  say "$venv has a Python older than $HA_MIN_PYTHON: recreating it"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! python="$(find_python)"; then
    echo "setup-ha: no Python >= $HA_MIN_PYTHON found (looked in HA_PYTHON, ~/.pyenv/versions, PATH);" \
      "Home Assistant $HA_VERSION needs one: install it (e.g. pyenv install 3.13) or set HA_PYTHON" >&2
    exit 1
  fi
  say "creating $venv with $python ($("$python" -c 'import platform; print(platform.python_version())'))"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi

say "installing Home Assistant $HA_VERSION into $venv"
rm -f "$stamp"
quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
uv=("$venv/bin/uv" pip install --quiet --python "$venv/bin/python")
# The wheel alone first: it carries the constraints HA applies to everything it installs.
"${uv[@]}" --no-deps "homeassistant==$HA_VERSION"
constraints="$("$venv/bin/python" -c 'import homeassistant, pathlib; print(pathlib.Path(homeassistant.__file__).parent / "package_constraints.txt")')"
"${uv[@]}" --constraint "$constraints" "homeassistant==$HA_VERSION" "${HA_REQUIREMENTS[@]}"

echo "$wanted" >"$stamp"
if ! installed_ok; then
  echo "setup-ha: $venv does not import Home Assistant $HA_VERSION after the install" >&2
  exit 1
fi
say "Home Assistant $("$venv/bin/hass" --version) is installed in $venv"
