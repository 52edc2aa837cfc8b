// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// On a serving rank: one chunk from rank 0, run by the rank's local pool as a
// job of its own. Its items stay encoded as rank 0 sent them, and its results
// go back encoded as the local workers wrote them: a serving rank never knows
// the types, only the runner that does.

#include <cstddef>
#include <cstdint>
#include <exception>
#include <vector>

#include "../../detail/job.hpp"
#include "remote_error.hpp"
#include "transport.hpp"

namespace procpool::mpi::detail {

/// One chunk of rank 0's, for the local engine; its answers become messages in @p outbox.
class relay_job final : public procpool::detail::job {
 public:
  /// @p items: the chunk's encoded items; @p offsets: where each starts, when @p stride is 0.
  relay_job(std::uint64_t pool, std::uint64_t id, std::uint64_t base, std::uint64_t n,
            std::uint32_t stride, std::vector<std::uint32_t> offsets, byte_buffer items,
            std::vector<byte_buffer>& outbox)
      : pool_(pool),
        id_(id),
        base_(base),
        n_(n),
        stride_(stride),
        offsets_(std::move(offsets)),
        items_(std::move(items)),
        settled_(static_cast<std::size_t>(n), false),
        outbox_(outbox) {
    this->chunksize = static_cast<std::size_t>(n);
    this->total = n;
  }

  std::uint64_t id() const noexcept { return id_; }
  /// True when none of it has gone to a local worker: it can be given back.
  bool untouched() const noexcept { return pos_ == 0; }

  std::size_t next_items(byte_buffer& out, std::vector<std::uint32_t>& offsets,
                         std::uint32_t& stride, std::size_t max, std::uint64_t& base) override {
    if (pos_ == n_ || max == 0) return 0;
    const std::uint64_t k = std::min<std::uint64_t>(max, n_ - pos_);
    const std::uint64_t from = at(pos_), to = at(pos_ + k);
    base = base_ + pos_;
    stride = stride_;
    if (!stride_)
      for (std::uint64_t i = pos_; i < pos_ + k; ++i)
        offsets.push_back(static_cast<std::uint32_t>(offsets_[i] - from));
    out.append(items_.data() + from, static_cast<std::size_t>(to - from));
    pos_ += k;
    if (pos_ == n_) items_ = byte_buffer();
    return static_cast<std::size_t>(k);
  }
  bool input_done() const override { return pos_ == n_; }

  std::size_t deliver(std::uint64_t base, std::uint64_t count,
                      const std::vector<procpool::detail::item_failure>& failed,
                      reader& values) override {
    byte_buffer m;
    begin_message(m, kind::results, pool_);
    m.append_value(id_);
    m.append_value(base);
    m.append_value(count);
    m.append_value(std::uint64_t{failed.size()});
    for (const auto& f : failed) {
      m.append_value(f.local);
      put_text(m, f.type);
      put_text(m, f.message);
    }
    const std::size_t bytes = values.remaining();
    m.append(values.take(bytes), bytes);
    seal(m);
    outbox_.push_back(std::move(m));
    for (std::uint64_t i = 0; i < count; ++i) settle(base + i);
    return failed.size();
  }

  void fail(std::uint64_t index, std::exception_ptr e) override {
    byte_buffer m;
    begin_message(m, kind::failure, pool_);
    m.append_value(id_);
    m.append_value(index);
    put_error(m, e);
    seal(m);
    outbox_.push_back(std::move(m));
    settle(index);
  }

  void abort(std::exception_ptr e) override {
    if (this->aborted) return;
    for (std::uint64_t i = 0; i < n_; ++i)
      if (!settled_[static_cast<std::size_t>(i)]) fail(base_ + i, e);
    this->aborted = true;
  }

 private:
  /// Where item @p i starts (i == n_: the end).
  std::uint64_t at(std::uint64_t i) const noexcept {
    if (stride_) return i * stride_;
    return i < n_ ? offsets_[static_cast<std::size_t>(i)] : items_.size();
  }
  void settle(std::uint64_t index) noexcept {
    if (index >= base_ && index - base_ < n_) settled_[static_cast<std::size_t>(index - base_)] = true;
  }

  std::uint64_t pool_, id_, base_, n_;
  std::uint32_t stride_;
  std::vector<std::uint32_t> offsets_;
  byte_buffer items_;
  std::uint64_t pos_ = 0;  // items handed to the local engine
  std::vector<bool> settled_;
  std::vector<byte_buffer>& outbox_;
};

}  // namespace procpool::mpi::detail
