// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// Pipe: Python's multiprocessing.Pipe, two connected ends shared by the
// processes forked after it is built; each direction is a queue_channel.
// An end knows its peer as the process that last used the other end. recv
// on an end whose peer has ended (even by SIGKILL, even while other processes
// still hold copies of the other end) takes what is left and then throws
// eof_error, within about 10 ms; Python's recv waits for ever there.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include <sys/types.h>

#include "codec.hpp"
#include "detail/posix.hpp"
#include "detail/queue_channel.hpp"
#include "detail/shared_block.hpp"
#include "detail/tuning.hpp"
#include "errors.hpp"
#include "queue.hpp"

namespace procpool {
namespace detail {

/// Who uses each end of a pipe, and which are closed.
struct pipe_ends {
  std::atomic<pid_t> user[2];
  std::atomic<std::uint32_t> closed[2];
};

/// The two directions of a pipe: dir[k] carries what end k sends.
struct pipe_state {
  pipe_state(std::size_t ring_bytes)
      : dir{{ring_bytes, 0, "procpool::Pipe"}, {ring_bytes, 0, "procpool::Pipe"}},
        ends("procpool::Pipe", 0) {}
  queue_channel dir[2];
  shared_block<pipe_ends> ends;
};

}  // namespace detail

/// One end of a Pipe: sends S, receives R (Python's Connection).
template <class S, class R = S>
class Connection {
  static_assert((detail::require_transferable<S>(), detail::require_transferable<R>(), true));

 public:
  /// Sends @p v, waiting while the pipe is full and the peer lives.
  /// @throws broken_pipe_error when the other end was closed or its process
  /// ended; usage_error on the receiving end of a one-way pipe, or after close().
  void send(const S& v);
  /// Receives the next item, waiting for one. @throws eof_error once the
  /// other end was closed or its process ended and nothing is left;
  /// usage_error on the sending end of a one-way pipe, or after close().
  R recv();
  /// Receives, waiting at most @p timeout for an item to begin; nullopt when
  /// none came. @throws as recv().
  template <class Rep, class Period>
  std::optional<R> recv(std::chrono::duration<Rep, Period> timeout) {
    return recv_until(detail::deadline_after(timeout));
  }
  /// True when an item is there to receive (or the end of the pipe, which
  /// recv reports), waiting at most @p timeout (0: look only).
  template <class Rep = long, class Period = std::ratio<1>>
  bool poll(std::chrono::duration<Rep, Period> timeout = std::chrono::seconds(0));
  /// Closes this end, in every process: the peer's recv ends with eof_error
  /// once it has taken what was sent, its send throws broken_pipe_error.
  void close() noexcept;
  /// True after close() of this end.
  bool closed() const noexcept { return state_->ends->closed[me_].load() != 0; }

  /// End @p me of @p s (Pipe() builds them).
  Connection(std::shared_ptr<detail::pipe_state> s, int me, bool can_send, bool can_recv)
      : state_(std::move(s)), me_(me), can_send_(can_send), can_recv_(can_recv) {}
  Connection(const Connection& o)
      : state_(o.state_), me_(o.me_), can_send_(o.can_send_), can_recv_(o.can_recv_) {}
  Connection& operator=(const Connection& o) {
    state_ = o.state_;
    me_ = o.me_;
    can_send_ = o.can_send_;
    can_recv_ = o.can_recv_;
    return *this;
  }

 private:
  std::optional<R> recv_until(std::int64_t deadline);
  /// Notes this process as the user of this end; @throws usage_error after close().
  void use(bool sending);
  /// True when the other end was closed, or the process that used it last has ended.
  bool peer_gone() const noexcept;

  std::shared_ptr<detail::pipe_state> state_;
  std::atomic<std::int64_t> last_look_{0};  // when send last looked at the peer's process
  int me_;
  bool can_send_, can_recv_;
};

/// Python's Pipe(duplex): two connected ends. Duplex, each sends and receives;
/// one-way (@p duplex false), the first only receives and the second only
/// sends, as Python's. Ends are copied into children (by reference capture
/// or as Process arguments); @p ring_bytes sizes each direction's ring.
/// @code
///   auto [parent_end, child_end] = procpool::Pipe<std::string>();
///   procpool::Process p([&] { child_end.send("ping"); });
///   p.start();
///   std::string s = parent_end.recv();
/// @endcode
template <class A, class B = A>
std::pair<Connection<A, B>, Connection<B, A>> Pipe(bool duplex = true,
                                                   std::size_t ring_bytes = 1 << 20) {
  auto s = std::make_shared<detail::pipe_state>(ring_bytes);
  return {Connection<A, B>(s, 0, duplex, true), Connection<B, A>(s, 1, true, duplex)};
}

// ---------------------------------------------------------------------------

template <class S, class R>
void Connection<S, R>::use(bool sending) {
  if (sending ? !can_send_ : !can_recv_)
    throw usage_error(sending ? "procpool::Pipe: send on the receiving end of a one-way pipe"
                              : "procpool::Pipe: recv on the sending end of a one-way pipe");
  if (closed()) throw usage_error("procpool::Pipe: this end was closed (close())");
  auto& user = state_->ends->user[me_];
  const pid_t self = detail::current_pid();
  if (user.load(std::memory_order_relaxed) != self) user.store(self, std::memory_order_relaxed);
}

template <class S, class R>
bool Connection<S, R>::peer_gone() const noexcept {
  const int other = 1 - me_;
  if (state_->ends->closed[other].load()) return true;
  const pid_t peer = state_->ends->user[other].load(std::memory_order_relaxed);
  return peer != 0 && peer != detail::current_pid() && detail::process_gone(peer);
}

template <class S, class R>
void Connection<S, R>::send(const S& v) {
  use(true);
  const auto broken = [] {
    return broken_pipe_error("procpool::Pipe::send: the other end was closed, or its process "
                             "ended; nobody will receive this");
  };
  // The peer's process is looked at once per peer_probe_ns at most: a look is system calls.
  const std::int64_t now = detail::monotonic_ns();
  if (state_->ends->closed[1 - me_].load() ||
      (now - last_look_.load(std::memory_order_relaxed) > detail::peer_probe_ns &&
       (last_look_.store(now, std::memory_order_relaxed), peer_gone())))
    throw broken();
  if (!detail::put_item(state_->dir[me_], v, std::numeric_limits<std::int64_t>::max(),
                        [this] { return !peer_gone(); }))
    throw broken();
}

template <class S, class R>
R Connection<S, R>::recv() {
  return *recv_until(std::numeric_limits<std::int64_t>::max());
}

template <class S, class R>
std::optional<R> Connection<S, R>::recv_until(std::int64_t deadline) {
  use(false);
  detail::queue_channel& in = state_->dir[1 - me_];
  constexpr std::int64_t probe_ns = detail::peer_probe_ns;
  for (;;) {
    const std::int64_t now = detail::monotonic_ns();
    const std::int64_t until = deadline - now > probe_ns ? now + probe_ns : deadline;
    try {
      if (std::optional<R> v = detail::get_item<R>(in, until)) return v;
      if (peer_gone()) {
        // What it sent before it went is still received.
        if (std::optional<R> v = detail::get_item<R>(in, -1)) return v;
        break;
      }
    } catch (const closed_error&) {
      break;  // the other end closed, and all it sent was received
    }
    if (until == deadline) return std::nullopt;
  }
  throw eof_error("procpool::Pipe::recv: the other end was closed, or its process ended, and "
                  "nothing is left to receive");
}

template <class S, class R>
template <class Rep, class Period>
bool Connection<S, R>::poll(std::chrono::duration<Rep, Period> timeout) {
  use(false);
  const std::int64_t deadline = detail::deadline_after(timeout);
  detail::queue_channel& in = state_->dir[1 - me_];
  constexpr std::int64_t probe_ns = detail::peer_probe_ns;
  for (;;) {
    const std::int64_t now = detail::monotonic_ns();
    const std::int64_t until = deadline - now > probe_ns ? now + probe_ns : deadline;
    if (in.wait_readable(until) || peer_gone()) return true;
    if (until == deadline) return false;
  }
}

template <class S, class R>
void Connection<S, R>::close() noexcept {
  state_->ends->closed[me_].store(1);
  state_->dir[me_].close();  // wakes a peer waiting to receive
}

}  // namespace procpool
