#!/usr/bin/env bash
# Installs what pikaci needs on a Debian 12 machine, idempotently:
#   - Debian packages (git, bash, python3 with venv) when something is missing (needs root),
#   - a virtualenv ($PIKACI_VENV, default .venv) with pikaci and its test tools,
#     reinstalled only when pyproject.toml changed.
# PIKACI_PYTHON picks the interpreter for the virtualenv (default: python3, >= 3.9).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${PIKACI_VENV:-$repo/.venv}"
python="${PIKACI_PYTHON:-python3}"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

need_apt=()
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v bash >/dev/null 2>&1 || need_apt+=(bash)
if ! command -v "$python" >/dev/null 2>&1; then
  need_apt+=(python3 python3-venv)
elif [ ! -x "$venv/bin/python" ] && ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${need_apt[*]}; install them (apt-get install ${need_apt[*]}) or run as root"
    exit 1
  fi
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
  log "$python is older than 3.9; set PIKACI_PYTHON to a newer interpreter"
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv "$venv"
fi

stamp="$venv/.pikaci-installed"
want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing pikaci and its test tools into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[test]"
  printf '%s\n' "$want" > "$stamp"
fi
