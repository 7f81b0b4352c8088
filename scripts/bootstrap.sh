#!/usr/bin/env bash
# Installs what pikaci needs on a Debian 12 machine, idempotently:
#   - Debian packages when something is missing (needs root): git, bash, python3 with venv,
#     nix-bin (Nix 2.8, single-user as root), bubblewrap (the local sandbox), jq, the
#     OpenSSH client and server (remote builders; the tests run a builder on 127.0.0.1) and
#     rsync (the baseline of the remote upload benchmark), Chromium and a font (the browser
#     tests of the web pages);
#   - Nix configured for offline use: `substituters =` in a marked block of /etc/nix/nix.conf,
#     added only when the file sets no substituters of its own (set PIKACI_NIX_OFFLINE=0 to
#     leave nix.conf alone);
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
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)  # the nix expression tests run install scripts
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)  # remote builders
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)  # the tests' loopback builder
# builds in the tests' sandboxed chroot stores ("remote" builder stores) run on busybox
[ -x /bin/busybox ] || need_apt+=(busybox-static)
# bench/remote_upload.py compares snapshot uploads against it
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
# the web pages' browser tests drive Debian's Chromium headless (Playwright, no browser download)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || need_apt+=(fonts-dejavu-core)
[ -x /usr/bin/python3 ] || need_apt+=(python3)  # the sandbox's guest python
if ! command -v "$python" >/dev/null 2>&1; then
  need_apt+=(python3 python3-venv)
elif [ ! -x "$venv/bin/python" ] && ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
# apt_install [--no-install-recommends] PACKAGE...: root only, one line saying what is missing
apt_install() {
  local packages=("${@}")
  [ "${1:-}" = --no-install-recommends ] && packages=("${@:2}")
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${packages[*]}; install them (apt-get install ${packages[*]}) or run as root"
    exit 1
  fi
  log "installing ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

if [ "${#need_apt[@]}" -gt 0 ]; then
  apt_install --no-install-recommends "${need_apt[@]}"
fi
# with its recommends: nix-setup-systemd creates the nixbld build users
command -v nix >/dev/null 2>&1 || apt_install nix-bin

nix_conf=/etc/nix/nix.conf
if [ "${PIKACI_NIX_OFFLINE:-1}" = 1 ] && [ "$(id -u)" -eq 0 ] \
  && ! grep -qE '^[[:space:]]*(extra-)?substituters[[:space:]]*=' "$nix_conf" 2>/dev/null; then
  log "configuring nix for offline use in $nix_conf"
  mkdir -p "$(dirname "$nix_conf")"
  {
    printf '\n# pikaci: offline (no binary caches are reachable); remove to use cache.nixos.org\n'
    printf 'substituters =\n'
  } >> "$nix_conf"
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
