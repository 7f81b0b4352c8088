#!/usr/bin/env bash
# Real Incus on this machine for the tests and CI: system containers only (VMs cannot run here),
# no systemd. Run as root; idempotent, and quiet and quick (well under 2 s) when everything is in
# place. Each step it performs prints one line (plus progress on the long ones) on stderr:
#
#   1. packages: incus-base from bookworm-backports (adds
#      /etc/apt/sources.list.d/bookworm-backports.sources) and debootstrap, when missing;
#   2. the daemon: `/usr/libexec/incus/incusd --group incus-admin` started detached when it is
#      not answering, pid in /run/pikaci-incusd.pid, log in /var/log/pikaci-incusd.log;
#   3. storage: a `dir` pool `default` and a root disk on it in the default profile (no network:
#      the guests need none; PIKACI_INCUS_STORAGE_DRIVER=btrfs makes `default` btrfs instead,
#      when it is created), and the copy-on-write pool the lanes use, `pikaci`
#      ($PIKACI_INCUS_COW_POOL): btrfs in a sparse loop file of $PIKACI_INCUS_STORAGE_SIZE
#      (default 30GiB) under /var/lib/incus/disks, created when missing. On it an instance is a
#      snapshot of the image unpacked once (`incus init` ~0.05 s here, against ~6 s of unpacking
#      the image into a `dir` pool for every instance). PIKACI_INCUS_COW_DRIVER=none skips it;
#      a kernel without btrfs gets a note and the tests use `default`;
#   4. the guest image, imported under the alias $PIKACI_INCUS_TEST_IMAGE (default pikaci/test)
#      in the default project: a Debian bookworm minbase laid out like the pikaci guest
#      (docs/guest-contract.md): user pikaci (uid 1000, group users/100) with /home/pikaci,
#      /cargo-home, /cargo-target, /workspace/snapshot, /staged, and /run/current-system/sw/bin
#      holding links to the rootfs's /usr/bin and /usr/sbin tools plus pikaci/guest/runner.py as
#      pikaci-incus-run. PID 1 is a small bash loop (/usr/sbin/init) that reaps orphans and exits
#      on SIGPWR/SIGTERM.
#
# Caches, under $PIKACI_INCUS_CACHE (default /var/cache/pikaci/incus):
#   rootfs-v<N>/rootfs             debootstrap + layout (25-60 s), keyed by ROOTFS_RECIPE;
#   pikaci-debian-<key>.tar.gz     the unified image tarball, <key> = digest of the runner's bytes
#                                  and both recipe versions, so a changed runner only re-packs;
#   pikaci-debian-<key>.tar.gz.sha256   its sha256, which is the fingerprint Incus gives it.
# The alias is re-pointed (old image deleted once nothing else names it) only when its
# fingerprint differs from the cached tarball's. PIKACI_DEBIAN_MIRROR overrides the mirror.
#
# The daemon keeps running afterwards: it is shared by every test session and slow to start.
# Stop it with `incus admin shutdown` (stops the instances, then incusd); the next run of this
# script starts it again. Step output goes to /var/log/pikaci-incus-setup.log; a failure exits
# non-zero with one line naming the step.
set -euo pipefail

ROOTFS_RECIPE=1 # bump when the debootstrap or layout below changes
IMAGE_RECIPE=1  # bump when the packing (metadata, tarball) changes

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runner="$repo/pikaci/guest/runner.py"
alias_name="${PIKACI_INCUS_TEST_IMAGE:-pikaci/test}"
cache="${PIKACI_INCUS_CACHE:-/var/cache/pikaci/incus}"
mirror="${PIKACI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
driver="${PIKACI_INCUS_STORAGE_DRIVER:-dir}"
cow_pool="${PIKACI_INCUS_COW_POOL:-pikaci}"
cow_driver="${PIKACI_INCUS_COW_DRIVER:-btrfs}"
pool_size="${PIKACI_INCUS_STORAGE_SIZE:-30GiB}"
incusd=/usr/libexec/incus/incusd
pidfile=/run/pikaci-incusd.pid
daemon_log=/var/log/pikaci-incusd.log
setup_log=/var/log/pikaci-incus-setup.log

exec 3>&2 # say() writes here, also from inside a step whose output is captured
say() { printf 'incus-setup: %s\n' "$*" >&3; }
fail() {
  say "$*"
  exit 1
}
trap 'fail "failed at line $LINENO: $BASH_COMMAND (exit $?)"' ERR

# step NAME CMD...: run CMD (a function too: in a subshell, so `set -e` holds inside it) with its
# output appended to the setup log; one line on failure
step() {
  local name=$1 out rc=0
  shift
  out=$(mktemp)
  ("$@") <&0 >"$out" 2>&1 &
  wait $! || rc=$?
  { printf '== %s: %s\n' "$(date -Is)" "$name"; cat "$out"; } >>"$setup_log"
  if [ "$rc" -ne 0 ]; then
    local last
    last=$(grep -v '^[[:space:]]*$' "$out" | tail -n 1 || true)
    rm -f "$out"
    fail "$name failed (exit $rc): ${last:-no output}; see $setup_log"
  fi
  rm -f "$out"
}
since() { echo "$((SECONDS - $1)) s"; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (installs packages, starts incusd)"
case $driver in dir | btrfs) ;; *) fail "PIKACI_INCUS_STORAGE_DRIVER must be dir or btrfs" ;; esac
case $cow_driver in btrfs | none) ;; *) fail "PIKACI_INCUS_COW_DRIVER must be btrfs or none" ;; esac
[ -f "$runner" ] || fail "guest runner not found at $runner"

exec 9>/run/lock/pikaci-incus-setup.lock
flock 9 # concurrent test sessions wait for each other here

# -- 1. packages ------------------------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
if ! command -v incus >/dev/null 2>&1 || [ ! -x "$incusd" ]; then
  sources=/etc/apt/sources.list.d/bookworm-backports.sources
  if [ ! -f "$sources" ]; then
    say "adding $sources"
    cat >"$sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  say "installing incus-base from bookworm-backports"
  t=$SECONDS
  step "apt-get update" apt-get update -qq
  step "installing incus-base" \
    apt-get install -y -qq --no-install-recommends -t bookworm-backports incus-base
  say "installed incus-base in $(since $t)"
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap"
  step "apt-get update" apt-get update -qq
  step "installing debootstrap" apt-get install -y -qq --no-install-recommends debootstrap
fi
if { [ "$driver" = btrfs ] || [ "$cow_driver" = btrfs ]; } && ! command -v mkfs.btrfs >/dev/null 2>&1; then
  say "installing btrfs-progs"
  step "apt-get update" apt-get update -qq
  step "installing btrfs-progs" apt-get install -y -qq --no-install-recommends btrfs-progs
fi

# -- 2. the daemon ----------------------------------------------------------------------------
if ! getent group incus-admin >/dev/null; then
  say "creating group incus-admin"
  step "groupadd incus-admin" groupadd --system incus-admin
fi
if ! [ -S /var/lib/incus/unix.socket ] || ! incus admin waitready --timeout 1 >/dev/null 2>&1; then
  say "starting incusd (log $daemon_log)"
  t=$SECONDS
  # its own session, so it outlives this script and whatever job started it
  # and without our lock (fd 9) or say()'s stderr (fd 3): a daemon holding the lock would
  # block every later run of this script
  setsid nohup "$incusd" --group incus-admin --logfile "$daemon_log" \
    </dev/null >>"$daemon_log" 2>&1 9>&- 3>&- &
  echo $! >"$pidfile"
  if ! incus admin waitready --timeout 60 >>"$setup_log" 2>&1; then
    fail "incusd did not become ready within 60 s; see $daemon_log"
  fi
  say "incusd ready (pid $(cat "$pidfile")) in $(since $t)"
fi

# -- 3. storage -------------------------------------------------------------------------------
if ! incus storage show default >/dev/null 2>&1; then
  pool_config=""
  [ "$driver" = dir ] || pool_config=$'\n'"  config: {size: $pool_size}"
  say "initialising incus: $driver storage pool default, root disk in the default profile"
  step "incus admin init --preseed" incus admin init --preseed <<EOF
storage_pools:
- name: default
  driver: $driver$pool_config
profiles:
- name: default
  description: pikaci tests (no network)
  devices:
    root:
      path: /
      pool: default
      type: disk
EOF
elif ! incus profile device get default root pool >/dev/null 2>&1; then
  say "adding a root disk on pool default to the default profile"
  step "incus profile device add" incus profile device add default root disk path=/ pool=default
fi
if [ -n "${PIKACI_INCUS_STORAGE_DRIVER:-}" ]; then
  have=$(incus query /1.0/storage-pools/default |
    sed -n 's/^[[:space:]]*"driver": "\([a-z]*\)".*/\1/p')
  [ "$have" = "$driver" ] ||
    say "note: pool default uses $have, not $driver (delete the pool and its instances to switch)"
fi

if [ "$cow_driver" != none ] && ! incus storage show "$cow_pool" >/dev/null 2>&1; then
  if grep -qw btrfs /proc/filesystems 2>/dev/null || [ -d /sys/module/btrfs ]; then
    say "creating the $cow_driver storage pool $cow_pool (sparse loop file of $pool_size)"
    step "incus storage create $cow_pool" \
      incus storage create "$cow_pool" "$cow_driver" "size=$pool_size"
  else
    say "note: this kernel has no btrfs; no copy-on-write pool (instances unpack the image)"
  fi
fi

# -- 4. the guest image -----------------------------------------------------------------------
mkdir -p "$cache"
key=$( (
  printf 'pikaci-incus-image rootfs-v%s image-v%s\n' "$ROOTFS_RECIPE" "$IMAGE_RECIPE"
  cat "$runner"
) | sha256sum | cut -c1-16)
tarball="$cache/pikaci-debian-$key.tar.gz"
base="$cache/rootfs-v$ROOTFS_RECIPE"

build_rootfs() { # debootstrap + the guest layout into $1/rootfs
  local root=$1/rootfs
  mkdir -p "$1"
  debootstrap --variant=minbase --include=python3 bookworm "$root" "$mirror" 2>&1 | {
    local verb prev=""
    while IFS= read -r line; do
      printf '%s\n' "$line" # to the setup log (and the failure line)
      case $line in
        "I: "*)
          verb=${line#I: }
          verb=${verb%% *}
          [ "$verb" = Validating ] && verb=Retrieving # they alternate, package by package
          if [ "$verb" != "$prev" ]; then
            say "  debootstrap: ${line#I: }"
            prev=$verb
          fi
          ;;
        "E: "* | "W: "*) say "  debootstrap: ${line#?: }" ;;
      esac
    done
  }
  # the user the runner drops to: pikaci, uid 1000, group users (100)
  chroot "$root" useradd --uid 1000 --gid 100 --create-home --home-dir /home/pikaci \
    --shell /bin/bash pikaci
  install -d -m 0755 "$root/workspace/snapshot" "$root/staged/linux-rust/workspace-deps" \
    "$root/staged/linux-rust/workspace-build" "$root/run/current-system/sw/bin"
  install -d -m 0755 -o 1000 -g 100 "$root/cargo-home" "$root/cargo-target" \
    "$root/run/pika-cloud" "$root/run/pika-cloud/logs"
  # the system profile: every tool of /usr/bin and /usr/sbin (/usr/bin wins a name clash)
  local dir tool name
  for dir in /usr/bin /usr/sbin; do
    for tool in "$root$dir"/*; do
      name=${tool##*/}
      [ -e "$root/run/current-system/sw/bin/$name" ] ||
        [ -L "$root/run/current-system/sw/bin/$name" ] ||
        ln -s "$dir/$name" "$root/run/current-system/sw/bin/$name"
    done
  done
  rm -f "$root/run/current-system/sw/bin/pikaci-incus-run" # packed separately, per runner
  # PID 1: reap orphans, stop on SIGPWR (incus stop) or SIGTERM
  cat >"$root/usr/sbin/init" <<'EOF'
#!/bin/bash
# pikaci test guest init: keeps the container up, reaps orphans, exits on SIGPWR/SIGTERM/SIGINT
trap 'exit 0' PWR TERM INT
while :; do
  sleep 3600 &
  wait $!
done
EOF
  chmod 0755 "$root/usr/sbin/init"
  echo pikaci-incus-test >"$root/etc/hostname"
  printf '127.0.0.1 localhost pikaci-incus-test\n::1 localhost ip6-localhost ip6-loopback\n' \
    >"$root/etc/hosts"
  : >"$root/etc/resolv.conf" # no network
  cat >"$root/etc/pikaci-incus.README" <<'EOF'
pikaci test guest (Debian bookworm minbase), built by scripts/incus-setup.sh.
Layout as the NixOS image (nix/incus/pikaci-image.nix), see docs/guest-contract.md:
  /run/current-system/sw/bin/pikaci-incus-run   the guest runner
  /run/pika-cloud                               request, lifecycle files, logs, artifacts
  /workspace/snapshot, /staged/linux-rust/*     read-only mounts
  /cargo-home, /cargo-target, /home/pikaci      owned by pikaci (uid 1000, gid 100)
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
}

# remove_partial DIR: what a failed earlier run left (only ever one: this script holds the lock);
# debootstrap may have left /proc or /sys mounted inside it
remove_partial() {
  local mnt
  [ -e "$1" ] || return 0
  awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
    while IFS= read -r mnt; do umount -l "$mnt" || true; done
  rm -rf --one-file-system "$1"
}

pack_image() { # the unified tarball: metadata.yaml + the cached rootfs + this runner
  local stage="$cache/.pack" tmp="$cache/.image.tar.gz.partial"
  remove_partial "$stage"
  install -d "$stage/rootfs/run/current-system/sw/bin"
  install -m 0555 -o 0 -g 0 "$runner" "$stage/rootfs/run/current-system/sw/bin/pikaci-incus-run"
  cat >"$stage/metadata.yaml" <<EOF
architecture: x86_64
creation_date: $(date +%s)
properties:
  description: pikaci test guest (Debian bookworm minbase, runner $key)
  os: debian
  release: bookworm
  variant: pikaci-test
EOF
  tar --numeric-owner -C "$base" -cf - rootfs \
    -C "$stage" metadata.yaml rootfs/run/current-system/sw/bin/pikaci-incus-run |
    gzip -1 >"$tmp"
  sha256sum "$tmp" | cut -d' ' -f1 >"$tmp.sha256"
  mv "$tmp.sha256" "$tarball.sha256"
  mv "$tmp" "$tarball"
  rm -rf "$stage"
}

if [ ! -f "$tarball" ] || [ ! -f "$tarball.sha256" ]; then
  if [ ! -d "$base/rootfs" ] || [ ! -f "$base/.complete" ]; then
    say "building the guest rootfs with debootstrap ($mirror, 25-60 s)"
    t=$SECONDS
    partial="$cache/.rootfs-v$ROOTFS_RECIPE.partial"
    remove_partial "$partial"
    step "building the guest rootfs" build_rootfs "$partial"
    remove_partial "$base"
    touch "$partial/.complete"
    mv "$partial" "$base"
    # earlier recipes' rootfs are never used again
    find "$cache" -maxdepth 1 -name 'rootfs-v*' ! -name "rootfs-v$ROOTFS_RECIPE" \
      -exec rm -rf {} +
    say "built the rootfs in $(since $t) ($(du -sh "$base/rootfs" | cut -f1))"
  fi
  say "packing the image $tarball"
  t=$SECONDS
  step "packing the image" pack_image
  say "packed the image in $(since $t) ($(du -h "$tarball" | cut -f1))"
  # keep the four newest tarballs (other checkouts may carry other runners)
  find "$cache" -maxdepth 1 -name 'pikaci-debian-*.tar.gz' -printf '%T@ %p\n' | sort -rn |
    tail -n +5 | cut -d' ' -f2- | while IFS= read -r old; do rm -f "$old" "$old.sha256"; done
fi
fingerprint=$(cat "$tarball.sha256")

current=$(incus query "/1.0/images/aliases/${alias_name//\//%2F}" 2>/dev/null |
  sed -n 's/^[[:space:]]*"target": "\([0-9a-f]*\)".*/\1/p' || true)
if [ "$current" != "$fingerprint" ]; then
  t=$SECONDS
  if [ -n "$current" ]; then
    step "deleting the alias $alias_name" incus image alias delete "$alias_name"
  fi
  if incus query "/1.0/images/$fingerprint" >/dev/null 2>&1; then
    say "pointing $alias_name at the cached image ${fingerprint:0:12}"
    step "creating the alias $alias_name" incus image alias create "$alias_name" "$fingerprint"
  else
    say "importing the image as $alias_name (${fingerprint:0:12})"
    step "importing the image" incus image import "$tarball" --alias "$alias_name"
    say "imported the image in $(since $t)"
  fi
  # the old image goes once no alias names it any more
  if [ -n "$current" ] && incus query "/1.0/images/$current" 2>/dev/null |
    tr -d ' \n' | grep -q '"aliases":\[\]'; then
    say "deleting the previous image ${current:0:12}"
    step "deleting the previous image" incus image delete "$current"
  fi
fi
