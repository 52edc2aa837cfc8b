// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// SharedMemory: Python's multiprocessing.shared_memory.SharedMemory. Two
// kinds. Anonymous (the default): a mapping inherited by the processes
// forked after it is built, with no name anywhere, so nothing is left behind
// whatever becomes of its owner, SIGKILL included. Named (create/attach), in
// /dev/shm, for processes that are not forks of each other: the creating
// process removes the name when its last copy goes (Python leaves that to an
// explicit unlink()), unless it dies first.

#include <atomic>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include <boost/interprocess/anonymous_shared_memory.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include "detail/posix.hpp"
#include "errors.hpp"

namespace procpool {

/// A block of memory shared by processes.
/// @code
///   procpool::SharedMemory shm(1 << 20);                    // anonymous, for forks
///   auto named = procpool::SharedMemory::create("frames", 4096);
///   auto other = procpool::SharedMemory::attach("frames");  // in any process
/// @endcode
class SharedMemory {
 public:
  /// @p size bytes, zeroed, anonymous: shared with the processes forked after this.
  explicit SharedMemory(std::size_t size);
  /// A new named block of @p size bytes, zeroed; @p name (no '/') may be empty
  /// for a fresh one. @throws usage_error for a bad name, error when it exists.
  static SharedMemory create(const std::string& name, std::size_t size);
  /// The named block @p name that another process created. @throws error when there is none.
  static SharedMemory attach(const std::string& name);

  /// The bytes (Python's buf).
  std::span<std::byte> buf() const noexcept {
    return {static_cast<std::byte*>(m_->region.get_address()), m_->region.get_size()};
  }
  std::byte* data() const noexcept { return buf().data(); }
  std::size_t size() const noexcept { return m_->region.get_size(); }
  /// The name (empty for an anonymous block).
  const std::string& name() const noexcept { return m_->name; }
  /// Removes the name now: later attach() calls fail; mappings stay valid.
  void unlink();

 private:
  struct mapping {
    boost::interprocess::mapped_region region;
    std::string name;
    pid_t remover = 0;  // the process that removes the name with its last copy
    ~mapping() {
      if (remover && remover == detail::current_pid())
        boost::interprocess::shared_memory_object::remove(name.c_str());
    }
  };
  explicit SharedMemory(std::shared_ptr<mapping> m) noexcept : m_(std::move(m)) {}
  static void check_name(const std::string& name);
  static std::string fresh_name();

  std::shared_ptr<mapping> m_;
};

// ---------------------------------------------------------------------------

inline SharedMemory::SharedMemory(std::size_t size) : m_(std::make_shared<mapping>()) {
  if (size == 0) throw usage_error("procpool::SharedMemory: size 0; ask for at least one byte");
  try {
    m_->region = boost::interprocess::anonymous_shared_memory(size);
  } catch (const std::exception& e) {
    throw error("procpool::SharedMemory: could not map " + std::to_string(size) +
                " bytes (" + e.what() + "); free memory or ask for less");
  }
}

inline void SharedMemory::check_name(const std::string& name) {
  if (name.size() > 200 || name.find('/') != std::string::npos || name == "." || name == "..")
    throw usage_error("procpool::SharedMemory: bad name \"" + name +
                      "\"; use up to 200 characters and no '/' (it becomes /dev/shm/<name>)");
}

inline std::string SharedMemory::fresh_name() {
  static std::atomic<unsigned> counter{0};
  return "procpool_" + std::to_string(detail::current_pid()) + "_" +
         std::to_string(detail::monotonic_ns()) + "_" + std::to_string(counter++);
}

inline SharedMemory SharedMemory::create(const std::string& name, std::size_t size) {
  namespace bip = boost::interprocess;
  const std::string n = name.empty() ? fresh_name() : name;
  check_name(n);
  if (size == 0) throw usage_error("procpool::SharedMemory::create: size 0; ask for at least one byte");
  auto m = std::make_shared<mapping>();
  try {
    bip::shared_memory_object obj(bip::create_only, n.c_str(), bip::read_write);
    m->name = n;
    m->remover = detail::current_pid();  // from here on, removed whatever fails below
    obj.truncate(static_cast<bip::offset_t>(size));
    m->region = bip::mapped_region(obj, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    throw error("procpool::SharedMemory::create: could not create \"" + n + "\" of " +
                std::to_string(size) + " bytes (" + e.what() +
                (e.get_error_code() == bip::already_exists_error
                     ? "); a block of that name exists: attach() to it, or choose another name"
                     : "); is /dev/shm mounted, with room?"));
  }
  return SharedMemory(std::move(m));
}

inline SharedMemory SharedMemory::attach(const std::string& name) {
  namespace bip = boost::interprocess;
  check_name(name);
  auto m = std::make_shared<mapping>();
  try {
    bip::shared_memory_object obj(bip::open_only, name.c_str(), bip::read_write);
    m->region = bip::mapped_region(obj, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    throw error("procpool::SharedMemory::attach: could not open \"" + name + "\" (" + e.what() +
                "); create() it first, in this or another process");
  }
  m->name = name;
  return SharedMemory(std::move(m));
}

inline void SharedMemory::unlink() {
  if (m_->name.empty()) return;  // anonymous: no name to remove
  boost::interprocess::shared_memory_object::remove(m_->name.c_str());
  m_->remover = 0;
}

}  // namespace procpool
