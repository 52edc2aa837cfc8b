// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// A runner's address from one rank to another. Every rank runs the same
// program, but each loads it at its own address (PIE, ASLR): a runner crosses
// as its distance from an anchor function in the same module, and the
// program's fingerprint, checked when a pool opens, says the ranks run the
// same build.

#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdint>
#include <string>

#include "../../errors.hpp"

namespace procpool::mpi::detail {

/// The anchor runners are measured from; its address differs per rank.
[[gnu::noinline]] inline void code_anchor() noexcept { asm volatile(""); }

/// Where the module holding @p fn is loaded.
inline std::uintptr_t module_base(const void* fn) noexcept {
  Dl_info info{};
  if (::dladdr(fn, &info) == 0) return 0;
  return reinterpret_cast<std::uintptr_t>(info.dli_fbase);
}

/// @p runner as a distance from the anchor.
/// @throws usage_error when it is in another module (a shared library) than the anchor.
inline std::int64_t runner_offset(std::uint64_t runner) {
  const auto anchor = reinterpret_cast<std::uintptr_t>(&code_anchor);
  if (module_base(reinterpret_cast<const void*>(runner)) !=
      module_base(reinterpret_cast<const void*>(anchor)))
    throw usage_error(
        "procpool::mpi::Pool: this call is compiled into a shared library, apart from "
        "procpool's anchor; compile the code that calls the pool into the program itself");
  return static_cast<std::int64_t>(runner - anchor);
}

/// The runner at @p offset from this rank's anchor.
inline std::uint64_t runner_at(std::int64_t offset) noexcept {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&code_anchor) +
                                    static_cast<std::uintptr_t>(offset));
}

/// What must be equal on every rank for runners to cross: the anchor's place
/// in its module, and the size and modification time of the program's file.
inline std::string program_fingerprint() {
  const auto anchor = reinterpret_cast<std::uintptr_t>(&code_anchor);
  std::string f = std::to_string(anchor - module_base(reinterpret_cast<const void*>(anchor)));
  struct stat st {};
  if (::stat("/proc/self/exe", &st) == 0)
    f += ":" + std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec);
  return f;
}

}  // namespace procpool::mpi::detail
