// procpool tests: objects that a test and the processes it forks all see.
#pragma once

#include <cerrno>
#include <new>
#include <system_error>

#include <sys/mman.h>

namespace procpool_test {

/// A value-initialized T in MAP_SHARED anonymous memory. Made before the pool
/// (or child) forks, it is the same bytes in the test and in every child:
/// counters, flags, pids. T is typically std::atomic or a struct of them.
template <class T>
class shared {
 public:
  shared() {
    void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
    p_ = new (p) T();
  }
  ~shared() {
    p_->~T();
    ::munmap(p_, sizeof(T));
  }
  shared(const shared&) = delete;
  shared& operator=(const shared&) = delete;
  T* operator->() const { return p_; }
  T& operator*() const { return *p_; }
  T* get() const { return p_; }

 private:
  T* p_;
};

}  // namespace procpool_test
