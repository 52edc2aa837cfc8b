// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// A runner's address from one rank to another. Every rank runs the same
// program, but each loads it at its own address (PIE, ASLR): a runner crosses
// as its distance from an anchor function in the same module, and the
// program's fingerprint (its build id), checked when a pool opens, says the
// ranks run the same build.

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/stat.h>

#include <cstdint>
#include <string>
#include <string_view>

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

/// The GNU build id of the module holding @p fn, in hex; empty when it has none.
inline std::string build_id_of(const void* fn) {
  struct search {
    std::uintptr_t at;
    std::string id;
  } q{reinterpret_cast<std::uintptr_t>(fn), {}};
  ::dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) -> int {
        auto& q = *static_cast<search*>(data);
        bool holds = false;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          const std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
          holds |= ph.p_type == PT_LOAD && q.at >= lo && q.at < lo + ph.p_memsz;
        }
        if (!holds) return 0;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_NOTE) continue;
          const char* p = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
          const char* end = p + ph.p_memsz;
          while (p + sizeof(ElfW(Nhdr)) <= end) {
            const auto* n = reinterpret_cast<const ElfW(Nhdr)*>(p);
            const char* name = p + sizeof *n;
            const char* desc = name + ((n->n_namesz + 3) & ~3u);
            if (n->n_type == NT_GNU_BUILD_ID && n->n_namesz == 4 &&
                std::string_view(name, 3) == "GNU" && desc + n->n_descsz <= end) {
              static const char hex[] = "0123456789abcdef";
              for (unsigned k = 0; k < n->n_descsz; ++k) {
                const auto b = static_cast<unsigned char>(desc[k]);
                q.id += hex[b >> 4];
                q.id += hex[b & 15];
              }
              return 1;
            }
            p = desc + ((n->n_descsz + 3) & ~3u);
          }
        }
        return 1;
      },
      &q);
  return q.id;
}

/// What must be equal on every rank for runners to cross: the program's GNU
/// build id (the linker's, by default on Linux), else the anchor's place in
/// its module and the program file's size and modification time.
inline std::string program_fingerprint() {
  const auto anchor = reinterpret_cast<std::uintptr_t>(&code_anchor);
  if (std::string id = build_id_of(reinterpret_cast<const void*>(anchor)); !id.empty())
    return "build id " + id;
  std::string f = "anchor at +" +
                  std::to_string(anchor - module_base(reinterpret_cast<const void*>(anchor)));
  struct stat st {};
  if (::stat("/proc/self/exe", &st) == 0)
    f += ", program file of " + std::to_string(st.st_size) + " bytes, modified at " +
         std::to_string(st.st_mtim.tv_sec);
  return f;
}

}  // namespace procpool::mpi::detail
