// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Byte buffers for messages, and the bounds-checked reader the codecs decode from.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <utility>

#include <sys/mman.h>

#include "../errors.hpp"
#include "tuning.hpp"

namespace procpool::detail {

/// Asks for transparent huge pages for the whole 2 MiB pages of a fresh
/// allocation [p, p + n) from malloc, before anything is written to it: where
/// THP is 'madvise', a 256 MiB value decoded into it otherwise takes 65,536
/// page faults, and a map's 8 MiB of results 2,048. From 4 MiB up (two whole
/// huge pages at least). Memory glibc serves from its heap keeps the hint
/// after it is freed, so later allocations there may get huge pages too, as
/// they would with THP 'always'. A hint; does nothing if refused.
inline void advise_huge_pages(void* p, std::size_t n) noexcept {
  constexpr std::uintptr_t huge = std::uintptr_t{2} << 20;
  if (n < huge_buffer_bytes) return;
  const auto from = (reinterpret_cast<std::uintptr_t>(p) + huge - 1) & ~(huge - 1);
  const auto to = (reinterpret_cast<std::uintptr_t>(p) + n) & ~(huge - 1);
  if (to > from) ::madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
}

/// A growable byte array that, unlike std::vector<char>, does not zero what it
/// grows into: a 300 MiB message is written once, not cleared first. Buffers of
/// 4 MiB and more are mapped with transparent huge pages requested, which
/// saves the parent and the worker most of the page faults of a big message.
class byte_buffer {
 public:
  byte_buffer() = default;
  byte_buffer(byte_buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        cap_(std::exchange(o.cap_, 0)),
        borrowed_(std::exchange(o.borrowed_, false)) {}
  byte_buffer& operator=(byte_buffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      cap_ = std::exchange(o.cap_, 0);
      borrowed_ = std::exchange(o.borrowed_, false);
    }
    return *this;
  }
  /// Writes into @p cap bytes at @p p that someone else owns (empty at first).
  /// Growing past them moves the contents to memory of its own: borrowed()
  /// then says false.
  void borrow(char* p, std::size_t cap) noexcept {
    release();
    data_ = p;
    size_ = 0;
    cap_ = cap;
    borrowed_ = true;
  }
  bool borrowed() const noexcept { return borrowed_; }
  ~byte_buffer() { release(); }

  std::size_t size() const noexcept { return size_; }
  std::size_t capacity() const noexcept { return cap_; }
  char* data() noexcept { return data_; }
  const char* data() const noexcept { return data_; }
  void clear() noexcept { size_ = 0; }

  /// Makes the size @p n, keeping the first min(n, size()) bytes.
  void resize(std::size_t n) {
    reserve(n);
    size_ = n;
  }
  void reserve(std::size_t n) {
    if (n <= cap_) return;
    std::size_t cap = cap_ ? cap_ : 256;
    while (cap < n) cap *= 2;
    char* p = allocate(cap);
    if (size_) std::memcpy(p, data_, size_);
    release();
    data_ = p;
    cap_ = cap;
  }
  /// Appends @p n bytes and returns where they go.
  char* grow(std::size_t n) {
    const std::size_t at = size_;
    resize(size_ + n);
    return data_ + at;
  }
  void append(const void* p, std::size_t n) {
    if (n) std::memcpy(grow(n), p, n);
  }
  template <class T>
  void append_value(const T& v) {
    append(&v, sizeof v);
  }
  /// Drops the memory of a buffer that grew past @p limit and holds no more
  /// than that now, so one huge message does not pin its size for good.
  void shrink_if_above(std::size_t limit) {
    if (cap_ > limit && size_ <= limit) {
      release();
      cap_ = size_ = 0;
    }
  }

 private:
  static constexpr std::size_t mapped_from = huge_buffer_bytes;

  static char* allocate(std::size_t cap) {
    if (cap < mapped_from) return new char[cap];
    void* p = ::mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    ::madvise(p, cap, MADV_HUGEPAGE);  // a hint; fine if the kernel says no
    return static_cast<char*>(p);
  }
  void release() noexcept {
    if (!data_) return;
    if (borrowed_)
      borrowed_ = false;
    else if (cap_ < mapped_from)
      delete[] data_;
    else
      ::munmap(data_, cap_);
    data_ = nullptr;
  }

  char* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t cap_ = 0;
  bool borrowed_ = false;  // data_ is not ours (borrow())
};

/// Reads bytes from [p, end); running past the end throws decode_error, so a
/// truncated or corrupted message can never be read beyond its bounds.
class reader {
 public:
  reader(const char* p, std::size_t n) noexcept : p_(p), end_(p + n) {}
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - p_); }
  const char* position() const noexcept { return p_; }

  /// The next @p n bytes, consumed.
  const char* take(std::size_t n) {
    if (n > remaining())
      throw decode_error("procpool: a message ended " + std::to_string(n - remaining()) +
                         " bytes early (truncated or corrupted data crossed the process boundary)");
    const char* at = p_;
    p_ += n;
    return at;
  }
  void read(void* dst, std::size_t n) {
    const char* src = take(n);
    if (n) std::memcpy(dst, src, n);
  }
  template <class T>
  T read_value() {
    T v;
    read(&v, sizeof v);
    return v;
  }

 private:
  const char* p_;
  const char* end_;
};

}  // namespace procpool::detail
