// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

// The messages between rank 0 and the serving ranks, and how they cross:
// every message is a header and a body, sent without blocking; a body over
// piece_bytes follows in pieces (MPI counts are int), each a message of its
// own with tag_rest, which MPI delivers in order after the first.

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <deque>
#include <iterator>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "../../detail/buffer.hpp"
#include "../../detail/posix.hpp"
#include "../../errors.hpp"

namespace procpool::mpi::detail {

using procpool::detail::byte_buffer;
using procpool::detail::reader;

/// What a message says. Rank 0 sends open, task, revoke, close, terminate;
/// a serving rank answers opened/refused, results/failure, revoked/kept, bye,
/// and says alive when it has had nothing to say for a while.
enum class kind : std::uint32_t {
  open = 1,       // a pool is built: its serial number, the program's and F's fingerprints
  opened = 2,     // the serving rank built the same pool: its workers, host, pid
  refused = 3,    // it did not: why (a string)
  task = 4,       // a chunk of items to run
  revoke = 5,     // give that chunk back if none of it has started
  revoked = 6,    // given back, not run
  kept = 7,       // already started: it runs where it is
  results = 8,    // values and task errors of some items of a chunk
  failure = 9,    // one item failed otherwise (its worker died, timed out, ...)
  close = 10,     // finish what was sent, then stop serving this pool
  terminate = 11, // stop now, killing the local workers
  bye = 12,       // the serving rank stopped serving this pool
  alive = 13,     // nothing else to say for heartbeat_ns: the serving rank is alive
  ended = 14,     // rank 0's session ended: a rank still waiting to open a pool never will
};

/// A serving rank says something at least this often while it serves.
inline constexpr std::int64_t heartbeat_ns = 1'000'000'000;
/// Rank 0 gives up on a serving rank it has not heard from for this long
/// (SIGSTOP, a hung node): its unanswered items fail or run elsewhere.
inline constexpr std::int64_t silence_limit_ns = 10'000'000'000;

struct message_header {
  std::uint32_t magic;
  std::uint32_t kind;
  std::uint64_t pool;  // the pool's serial number (session::next_serial)
  std::uint64_t size;  // bytes of body after this header
};

inline constexpr std::uint32_t message_magic = 0x50504d31;  // "PPM1"
inline constexpr int tag_first = 0x5050;
inline constexpr int tag_rest = 0x5051;
inline constexpr std::size_t max_piece_bytes = std::size_t{1} << 30;

/// @throws procpool::error naming @p what when an MPI call failed.
inline void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw error(std::string("procpool::mpi: ") + what + " failed: " + std::string(text, len));
}

/// Starts a message of @p k for pool @p pool in @p b (the body follows; seal() ends it).
inline void begin_message(byte_buffer& b, kind k, std::uint64_t pool) {
  b.clear();
  b.append_value(message_header{message_magic, static_cast<std::uint32_t>(k), pool, 0});
}

/// Sets the header's body size once the body is written.
inline void seal(byte_buffer& b) {
  const std::uint64_t size = b.size() - sizeof(message_header);
  std::memcpy(b.data() + offsetof(message_header, size), &size, sizeof size);
}

/// The header of a received message, and a reader over its body.
/// @throws decode_error when it is not one of ours.
inline message_header open_message(const byte_buffer& b, reader& body) {
  if (b.size() < sizeof(message_header))
    throw decode_error("procpool::mpi: a message shorter than its header arrived");
  message_header h;
  std::memcpy(&h, b.data(), sizeof h);
  if (h.magic != message_magic || h.size != b.size() - sizeof h)
    throw decode_error("procpool::mpi: a corrupted message arrived");
  body = reader(b.data() + sizeof h, b.size() - sizeof h);
  return h;
}

inline void put_text(byte_buffer& b, const std::string& s) {
  b.append_value(std::uint64_t{s.size()});
  b.append(s.data(), s.size());
}

inline std::string get_text(reader& r) {
  const auto n = r.read_value<std::uint64_t>();
  if (n > r.remaining()) throw decode_error("procpool::mpi: a truncated string arrived");
  const char* p = r.take(static_cast<std::size_t>(n));
  return std::string(p, static_cast<std::size_t>(n));
}

/// The largest piece of a message: MPI counts are int. PROCPOOL_MPI_PIECE_BYTES
/// lowers it (read once), so that tests can send big messages in many pieces.
inline std::size_t piece_bytes() {
  static const std::size_t n = [] {
    const char* v = std::getenv("PROCPOOL_MPI_PIECE_BYTES");
    const long long want = v ? std::atoll(v) : 0;
    return want > 0 && static_cast<std::size_t>(want) < max_piece_bytes
               ? static_cast<std::size_t>(want)
               : max_piece_bytes;
  }();
  return n;
}

/// Sends and receives whole messages on one communicator, never blocking:
/// send() keeps the bytes until MPI is done with them (progress() frees them).
/// One thread at a time uses it (MPI_THREAD_SERIALIZED).
class transport {
 public:
  explicit transport(MPI_Comm comm) : comm_(comm) {}
  transport(const transport&) = delete;
  transport& operator=(const transport&) = delete;
  ~transport() {
    // MPI may still read what is in flight (cancelling a send does nothing in
    // Open MPI's ob1): the requests are freed, their bytes kept for good.
    if (out_.empty()) return;
    for (auto& o : out_)
      for (auto& r : o.reqs)
        if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    new std::deque<outgoing>(std::move(out_));  // never freed, on purpose
  }

  /// Starts sending @p msg (begin_message, body, seal) to @p dest.
  void send(int dest, byte_buffer&& msg) {
    out_.push_back(outgoing{std::move(msg), {}, dest});
    outgoing& o = out_.back();
    const std::size_t n = o.bytes.size(), piece = piece_bytes();
    for (std::size_t at = 0; at == 0 || at < n; at += piece) {
      const std::size_t len = std::min(piece, n - at);
      MPI_Request r;
      check_mpi(MPI_Isend(o.bytes.data() + at, static_cast<int>(len), MPI_BYTE, dest,
                          at == 0 ? tag_first : tag_rest, comm_, &r),
                "MPI_Isend");
      o.reqs.push_back(r);
    }
  }

  /// Frees what MPI has sent; true when nothing is left in flight.
  bool progress() {
    for (auto it = out_.begin(); it != out_.end();) {
      int done = 0;
      check_mpi(MPI_Testall(static_cast<int>(it->reqs.size()), it->reqs.data(), &done,
                            MPI_STATUSES_IGNORE),
                "MPI_Testall");
      it = done ? out_.erase(it) : std::next(it);
    }
    return out_.empty();
  }

  /// Bytes still on their way to @p dest.
  std::size_t pending_to(int dest) const noexcept {
    std::size_t n = 0;
    for (const auto& o : out_)
      if (o.dest == dest) n += o.bytes.size();
    return n;
  }

  /// Gives up on what is still on its way to @p dest (a rank that stopped
  /// answering may never take it): the requests are freed, the bytes kept for good.
  void abandon(int dest) {
    for (auto it = out_.begin(); it != out_.end();) {
      if (it->dest != dest) {
        ++it;
        continue;
      }
      for (auto& r : it->reqs)
        if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
      abandoned_.push_back(std::move(it->bytes));
      it = out_.erase(it);
    }
  }

  /// Receives one message from @p from (or anyone) if one has arrived; its
  /// source goes to @p src. False when none is there.
  bool poll(int& src, byte_buffer& msg, int from = MPI_ANY_SOURCE) {
    int flag = 0;
    MPI_Status st;
    check_mpi(MPI_Iprobe(from, tag_first, comm_, &flag, &st), "MPI_Iprobe");
    if (!flag) return false;
    src = st.MPI_SOURCE;
    msg.clear();
    receive_piece(msg, src, tag_first, st);
    if (msg.size() < sizeof(message_header)) return true;  // open_message says what is wrong
    message_header h;
    std::memcpy(&h, msg.data(), sizeof h);
    // The rest of a big message: its pieces are on their way, in order.
    while (h.magic == message_magic && msg.size() < h.size + sizeof h) {
      check_mpi(MPI_Probe(src, tag_rest, comm_, &st), "MPI_Probe");
      receive_piece(msg, src, tag_rest, st);
    }
    return true;
  }

  /// Sends what is queued, waiting (with short sleeps) until MPI has it all
  /// or @p deadline (monotonic ns) passes; true when all was sent.
  bool flush(std::int64_t deadline = std::numeric_limits<std::int64_t>::max()) {
    while (!progress()) {
      if (procpool::detail::monotonic_ns() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return true;
  }

 private:
  struct outgoing {
    byte_buffer bytes;
    std::vector<MPI_Request> reqs;
    int dest;
  };
  /// Appends the message @p st announced to @p msg.
  void receive_piece(byte_buffer& msg, int src, int tag, MPI_Status& st) {
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    const std::size_t at = msg.size();
    msg.resize(at + static_cast<std::size_t>(count));
    check_mpi(MPI_Recv(msg.data() + at, count, MPI_BYTE, src, tag, comm_, MPI_STATUS_IGNORE),
              "MPI_Recv");
  }

  MPI_Comm comm_;
  std::deque<outgoing> out_;
  std::vector<byte_buffer> abandoned_;  // bytes a freed request may still read
};

/// How long to wait between looks while nothing happens: not at all for
/// spin_ns after the last traffic (a round trip is then a few microseconds),
/// then from min_ns doubling up to max_ns, so an idle rank uses no CPU to
/// speak of.
class backoff {
 public:
  /// Something happened: look again at once, and keep looking for spin_ns.
  void reset() noexcept {
    since_ = procpool::detail::monotonic_ns();
    ns_ = 0;
  }
  /// Nothing happened: how long to wait before the next look (0: look again now).
  std::chrono::nanoseconds next() noexcept {
    if (procpool::detail::monotonic_ns() - since_ < spin_ns) return std::chrono::nanoseconds(0);
    ns_ = ns_ == 0 ? min_ns : std::min<std::int64_t>(ns_ * 2, max_ns);
    return std::chrono::nanoseconds(ns_);
  }
  static constexpr std::int64_t spin_ns = 200'000;
  static constexpr std::int64_t min_ns = 2'000;
  static constexpr std::int64_t max_ns = 1'000'000;

 private:
  std::int64_t since_ = 0;
  std::int64_t ns_ = 0;
};

}  // namespace procpool::mpi::detail
