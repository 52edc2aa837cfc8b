// procpool tests: the system-call seam (detail/posix.hpp's syscall_hooks)
// pointed at a test's table for one scope.
#pragma once

#include <procpool/procpool.hpp>

namespace procpool_test {

/// Installs @p table as the system calls procpool makes, for the scope.
class syscall_override {
 public:
  explicit syscall_override(const procpool::detail::syscall_table& table)
      : table_(table), prev_(procpool::detail::syscall_hooks.exchange(&table_)) {}
  ~syscall_override() { procpool::detail::syscall_hooks.store(prev_); }
  syscall_override(const syscall_override&) = delete;
  syscall_override& operator=(const syscall_override&) = delete;

 private:
  procpool::detail::syscall_table table_;
  const procpool::detail::syscall_table* prev_;
};

}  // namespace procpool_test
