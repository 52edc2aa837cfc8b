#!/usr/bin/env bash
# Configures, builds and runs procpool's tests: the command README's Quick
# start shows and the one .ci/run runs (once per compiler configuration).
#
#   scripts/test.sh [extra ctest arguments...]
#
# Environment (all optional):
#   BUILD_DIR      build tree                       (default: build)
#   BUILD_TYPE     CMAKE_BUILD_TYPE                 (default: Release)
#   CXX            C++ compiler, e.g. g++ or clang++ (default: CMake's choice)
#   CMAKE_ARGS     extra configure arguments, split on spaces,
#                  e.g. "-DPROCPOOL_WERROR=ON -DPROCPOOL_SANITIZE=address,undefined"
#   JOBS           parallel build and test jobs     (default: 2)
#   TEST_TIMEOUT   ctest's per-test timeout, seconds (default: 300)
#   PROCPOOL_SKIP_DEPS=1  do not look for / install Debian packages
#
# Packages are installed with apt-get (scripts/install-deps.sh) when missing
# and running as root or with passwordless sudo.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

build_dir=${BUILD_DIR:-build}
build_type=${BUILD_TYPE:-Release}
jobs=${JOBS:-2}
timeout=${TEST_TIMEOUT:-300}
read -r -a cmake_args <<<"${CMAKE_ARGS:-}"
if [[ -n "${CXX:-}" ]]; then
  cmake_args+=("-DCMAKE_CXX_COMPILER=$CXX")
fi

"$root/scripts/install-deps.sh"

echo "== configure $build_dir (${build_type}; ${CXX:-default compiler}; ${CMAKE_ARGS:-no extra arguments})"
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE="$build_type" "${cmake_args[@]}"

echo "== build $build_dir"
cmake --build "$build_dir" -j"$jobs"

echo "== test $build_dir"
cd "$build_dir"
ctest --output-on-failure --no-tests=error -j"$jobs" --timeout "$timeout" "$@"
