#!/usr/bin/env bash
# Container entrypoint. For `run` it checks the config before starting, so a missing, unreadable or
# invalid /config/config.yml ends in one clear line and exit status 2 instead of a traceback in a
# restart loop. Every other command goes straight to the CLI (`docker run IMAGE models list`), and a
# command that is not a deid-sidecar subcommand runs as given (`docker run -it IMAGE bash`).
set -euo pipefail

DEID_BIN="${DEID_BIN:-deid-sidecar}"
DEFAULT_CONFIG="${DEID_CONFIG:-/config/config.yml}"
# Keep in step with deid_sidecar/cli.py (tests/test_dockerfile.py compares the two lists).
SUBCOMMANDS=" run file image models media check-config config-docs go2rtc-yaml "

fail() {
  printf 'deid-sidecar (container): %s\n' "$*" >&2
  exit 2
}

config_argument() {
  # The value of -c/--config among the arguments, or nothing.
  local previous="" arg
  for arg in "$@"; do
    case "$previous" in -c | --config) printf '%s' "$arg" && return 0 ;; esac
    case "$arg" in --config=*) printf '%s' "${arg#--config=}" && return 0 ;; esac
    previous="$arg"
  done
}

check_config() {
  local config="$1"
  if [ ! -e "$config" ]; then
    fail "no config file at $config. Mount one, e.g. -v ./config.yml:$config:ro" \
      "(examples: integration/deid-sidecar/ in the repository; reference: docs/config.md)"
  fi
  if [ -d "$config" ]; then
    fail "$config is a directory: Docker creates one when the host file of a bind mount does not exist." \
      "Create the file on the host, then recreate the container"
  fi
  if [ ! -r "$config" ]; then
    fail "$config is not readable by uid $(id -u): make it world-readable (chmod 644) on the host"
  fi
  local status=0
  "$DEID_BIN" check-config "$config" || status=$?
  if [ "$status" -ne 0 ]; then
    printf 'deid-sidecar (container): %s is not valid (see the line above); not starting\n' "$config" >&2
    exit "$status"
  fi
}

if [ "$#" -eq 0 ]; then
  set -- run -c "$DEFAULT_CONFIG"
fi

case "$SUBCOMMANDS" in
  *" $1 "*) ;;
  *)
    case "$1" in
      -*) exec "$DEID_BIN" "$@" ;; # global options such as --version
      *) exec "$@" ;;
    esac
    ;;
esac

if [ "$1" = run ]; then
  config="$(config_argument "$@")"
  if [ -z "$config" ]; then
    # `run` without -c starts the built-in demo, whose media is not in the image.
    fail "'run' needs -c CONFIG in the container (default: run -c $DEFAULT_CONFIG)"
  fi
  check_config "$config"
fi

exec "$DEID_BIN" "$@"
