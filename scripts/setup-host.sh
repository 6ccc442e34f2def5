#!/usr/bin/env bash
# Prepares this machine to run Haven: Debian packages, CRIU >= 4.2 built from
# Debian's source, kernel settings, npm packages and Haven's own build.
#
# Idempotent: a second run only checks. The CRIU build is cached by version in
# $HAVEN_CACHE (default /var/cache/haven), so it is compiled once per machine.
# Used by both README commands and by .ci/run. Run as root on Debian 12.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${HAVEN_CACHE:-/var/cache/haven}
criu_min=4.2
criu_bin=/usr/local/sbin/criu
# CRIU caches what it learns of the kernel (~40 ms a run) in RUNDIR, but only on
# a tmpfs; /run is not one on every machine, so Haven builds CRIU with a RUNDIR
# of its own and mounts a small tmpfs there (see docs/CHECKPOINT-FAST-PATH.md).
criu_rundir=/run/haven/criu
# The flavor names the build options and scripts/criu-patches/ (bump it when
# either changes, so a cached build without them is not used).
criu_flavor=rundir-haven8
log() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host: run as root (Haven drives runc, CRIU and network namespaces)" >&2
  exit 1
fi

runtime_packages=(runc iptables nftables iproute2 busybox-static iputils-ping iputils-arping redis-server redis-tools zstd
  b3sum                        # BLAKE3 of large checkpoint files in archives (src/host/blake3.ts)
  gcc libc6-dev make xz-utils ca-certificates procps
  chromium fonts-dejavu-core # the dashboard's end-to-end test drives Debian's Chromium (playwright-core)
  etcd-server etcd-client)     # the control plane of several controllers (haven lab up --store etcd)
criu_build_packages=(build-essential pkg-config libprotobuf-dev libprotobuf-c-dev
  protobuf-c-compiler protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev
  libcap-dev libbsd-dev libnftables-dev libgnutls28-dev libaio-dev uuid-dev dpkg-dev patch)

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    apt-get update -q >/dev/null
    apt_updated=1
  fi
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install "${runtime_packages[@]}"
# redis-server's own service is not ours: Haven runs redis only inside containers.
if systemctl is-enabled redis-server >/dev/null 2>&1; then
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
# Nor is etcd's: Haven starts its members itself, each with a data dir of its own.
if systemctl is-enabled etcd >/dev/null 2>&1; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
# Without systemd (containers, CI) the package's init script may have started one on 2379.
if pgrep -x etcd >/dev/null 2>&1 && [ -f /etc/init.d/etcd ] && [ ! -d /run/haven/lab ]; then
  /etc/init.d/etcd stop >/dev/null 2>&1 || true
fi

# --- CRIU ------------------------------------------------------------------
# Debian 12's criu 3.17 fails on this kernel (vDSO) and 4.1 cannot dump TCP
# sockets on kernels >= 6.16, so Haven builds the newest Debian source >= 4.2.

newest_cached_criu() {
  local best=""
  for d in "$cache"/criu/*/; do
    [ -x "$d/criu-$criu_flavor" ] || continue
    local v
    v=$(basename "$d")
    if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
  done
  [ -n "$best" ] && echo "$best"
}

build_criu() {
  apt_install "${criu_build_packages[@]}"
  local work="$cache/criu-src"
  mkdir -p "$work/lists/partial" "$work/dl"
  # A deb-src entry for sid, pointed at the same archive this machine already uses.
  local uri
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  if [ -z "$uri" ]; then
    echo "setup-host: no Debian archive URI found in /etc/apt/sources.list.d/*.sources or sources.list" >&2
    exit 1
  fi
  cat >"$work/sid.sources" <<SRC
Types: deb-src
URIs: $uri
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  local aptopts=(-o "Dir::Etc::sourcelist=$work/sid.sources" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
  log "fetching Debian sid's source index for criu"
  apt-get "${aptopts[@]}" update -q >/dev/null
  local versions
  versions=$(apt-cache "${aptopts[@]}" showsrc criu | awk '/^Version:/{print $2}' | sort -u)
  local candidates=()
  for v in $versions; do
    dpkg --compare-versions "$v" ge "$criu_min" && candidates+=("$v")
  done
  # Newest first.
  mapfile -t candidates < <(printf '%s\n' "${candidates[@]}" | sort -rV)
  for full in "${candidates[@]}"; do
    local upstream=${full%-*}
    upstream=${upstream#*:}
    log "trying criu $full"
    rm -rf "$work/dl" && mkdir -p "$work/dl"
    # The .debian.tar may 404; the orig tarball is all Haven needs, and apt verifies
    # its checksum against the signed Sources index.
    (cd "$work/dl" && apt-get "${aptopts[@]}" source --download-only "criu=$full" >/dev/null 2>&1) || true
    local tarball="$work/dl/criu_${upstream}.orig.tar.xz"
    [ -f "$tarball" ] || { log "criu $full: source did not download"; continue; }
    # Verify again ourselves against the index's SHA-256, whatever apt did.
    local want
    want=$(apt-cache "${aptopts[@]}" showsrc criu |
      awk -v v="$full" -v f="criu_${upstream}.orig.tar.xz" '
        /^Version:/ {match_v = ($2 == v)}
        /^Checksums-Sha256:/ {s = 1; next}
        /^[^ ]/ {s = 0}
        match_v && s && $3 == f {print $1; exit}')
    local got
    got=$(sha256sum "$tarball" | awk '{print $1}')
    if [ -z "$want" ] || [ "$want" != "$got" ]; then
      echo "setup-host: checksum mismatch for $tarball (index: ${want:-none}, file: $got)" >&2
      exit 1
    fi
    log "criu $upstream: checksum ok ($got), building"
    rm -rf "$work/build" && mkdir -p "$work/build"
    tar -xf "$tarball" -C "$work/build" --strip-components=1
    for p in "$repo"/scripts/criu-patches/*.patch; do
      log "criu $upstream: applying $(basename "$p")"
      patch -s -d "$work/build" -p1 <"$p"
    done
    make -C "$work/build" -j"$(nproc)" RUNDIR="$criu_rundir" criu >"$work/build.log" 2>&1 || {
      tail -20 "$work/build.log" >&2
      echo "setup-host: criu $upstream failed to build (log: $work/build.log)" >&2
      exit 1
    }
    mkdir -p "$cache/criu/$upstream"
    install -m 0755 "$work/build/criu/criu" "$cache/criu/$upstream/criu-$criu_flavor"
    rm -rf "$work/build" "$work/dl"
    return 0
  done
  echo "setup-host: no criu source >= $criu_min could be downloaded from Debian sid" >&2
  exit 1
}

cached=$(newest_cached_criu || true)
if [ -z "$cached" ] || ! dpkg --compare-versions "$cached" ge "$criu_min"; then
  build_criu
  cached=$(newest_cached_criu)
fi
if cmp -s "$cache/criu/$cached/criu-$criu_flavor" "$criu_bin"; then
  log "criu $cached ($criu_flavor) already installed at $criu_bin"
else
  install -m 0755 "$cache/criu/$cached/criu-$criu_flavor" "$criu_bin"
  log "installed criu $cached ($criu_flavor) at $criu_bin"
fi
mkdir -p "$criu_rundir"
if [ "$(stat -f -c %T "$criu_rundir")" != tmpfs ]; then
  mount -t tmpfs -o size=1m,mode=0700 haven-criu "$criu_rundir"
fi
# A real check, not only a version string: this kernel must accept this CRIU.
"$criu_bin" check >/dev/null 2>&1 || {
  "$criu_bin" check >&2 || true
  echo "setup-host: '$criu_bin check' fails on this kernel" >&2
  exit 1
}

# --- Kernel settings ---------------------------------------------------------
# CRIU's lazy-pages server splices pages through pipes; root here lacks
# CAP_SYS_RESOURCE, so the pipe size limit must be raised or it fails (EBADF).
want_pipe=4194304
if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt $want_pipe ]; then
  sysctl -q -w fs.pipe-max-size=$want_pipe
fi
mkdir -p /etc/sysctl.d
echo "fs.pipe-max-size = $want_pipe" >/etc/sysctl.d/60-haven.conf

# --- Haven itself ------------------------------------------------------------
cd "$repo"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund >/dev/null
fi
log "building Haven"
npm run -s build
ln -sf "$repo/bin/haven" /usr/local/bin/haven
log "done: $("$criu_bin" --version | head -1), $(runc --version | head -1), haven on PATH"
