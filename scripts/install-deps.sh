#!/usr/bin/env bash
# Installs what building and testing procpool needs, from Debian's packages
# (Debian 12 / Ubuntu 22.04 or newer). Used by scripts/test.sh,
# scripts/examples.sh and .ci/run.
#
# Runs apt-get only when a package is missing (or when CI=true or
# PROCPOOL_FORCE_DEPS=1), as root directly or through passwordless sudo.
# Otherwise it lists what is missing and leaves it to you.
# PROCPOOL_SKIP_DEPS=1 skips all of this.
set -euo pipefail

packages=(
  cmake make g++              # the build, and GCC with its libasan/libubsan
  clang libclang-rt-dev       # clang++, and its sanitizer runtimes (only "recommended" by clang)
  libboost-dev libcereal-dev  # procpool's dependencies
  catch2                      # tests
  python3 ca-certificates git
  valgrind                    # .ci/run's memcheck subset (scripts/valgrind.sh)
  pkg-config                  # the pkg-config consumer (pkgconf on Debian 12)
  libopenmpi-dev openmpi-bin  # the optional procpool::mpi component, its tests and examples
)

# --list: print the packages, one line, for callers that run apt-get themselves (.ci/run).
if [[ "${1:-}" == --list ]]; then
  echo "${packages[*]}"
  exit 0
fi
if [[ "${PROCPOOL_SKIP_DEPS:-0}" == 1 ]]; then
  exit 0
fi
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: no apt here; install yourself: ${packages[*]}" >&2
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]]; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 && "${CI:-}" != true && "${PROCPOOL_FORCE_DEPS:-0}" != 1 ]]; then
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo)
else
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install-deps: missing packages (run as root, or install them): ${missing[*]}" >&2
  fi
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: apt-get install ${packages[*]}"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"
