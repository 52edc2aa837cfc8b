// libFuzzer target: arbitrary bytes into procpool's decoders and into the
// parent's parsing of what a worker writes into its result ring.
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined \
//     -fno-sanitize-recover=all -I include tests/fuzz/fuzz_decode.cpp -o fuzz_decode
//   ./fuzz_decode -max_len=4096 -max_total_time=60 corpus/
//
// The first byte picks what is fuzzed:
//   0: detail::decode<T>(rest) for several T (contiguous, tuple, cereal map,
//      a cereal struct, bool);
//   1: the raw bytes of a worker's result ring, drained by the parent;
//   2: one "results" frame whose body is the rest (seq/count fixed up to
//      match the chunk in flight when byte 1 is odd, to get past that check);
//   3: one "init_failed" frame whose body is the rest.
// Allowed outcomes: a value, or procpool::decode_error. Anything else, another
// exception type, a sanitizer report, an allocation above 64 MiB from an
// input of at most a few KiB, is a finding and aborts.
//
// Past findings (all fixed) are seeds in corpus/: cereal element counts that
// made the parent allocate, frame headers claiming 2^44 bytes, bool bytes other
// than 0 or 1 (also cereal's std::optional flag). To step over a class of them
// while looking for others: FUZZ_DECODE_TOLERATE=bool,frames,optional,counts,
// or FUZZ_DECODE_TOLERATE_KNOWN=1 for all.
// libFuzzer adds new inputs to the first corpus directory it is given: put a
// scratch directory first and tests/fuzz/corpus (the seeds) after it.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <typeinfo>
#include <vector>

#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

#include <procpool/procpool.hpp>

#include "../support/alloc_cap.hpp"

// ------------------------------------------------ allocation cap

namespace {
constexpr std::size_t allocation_cap = std::size_t{64} << 20;
using procpool_test::largest_refused;
}  // namespace
PROCPOOL_TEST_CAP_ALLOCATIONS(allocation_cap)

// ------------------------------------------------ reaching the engine's privates

// Explicit instantiation ignores access control, so a pointer to a private
// member can be taken there and handed out through a friend function.
template <class Tag, auto Member>
struct steal {
  friend auto stolen(Tag) { return Member; }
};

namespace pd = procpool::detail;

struct workers_tag {
  friend auto stolen(workers_tag);
};
struct drain_tag {
  friend auto stolen(drain_tag);
};
struct broken_tag {
  friend auto stolen(broken_tag);
};
struct shm_tag {
  friend auto stolen(shm_tag);
};
struct cap_tag {
  friend auto stolen(cap_tag);
};
struct disp_tag {
  friend auto stolen(disp_tag);
};
template struct steal<workers_tag, &pd::engine::workers_>;
template struct steal<drain_tag, &pd::engine::drain>;
template struct steal<broken_tag, &pd::engine::broken_>;
template struct steal<shm_tag, &pd::engine::shm_>;
template struct steal<cap_tag, &pd::engine::cap_>;
template struct steal<disp_tag, &pd::engine::disp_>;

// ------------------------------------------------ types decoded

namespace {

struct record {
  std::string name;
  std::vector<double> xs;
  int id = 0;
  std::map<std::string, int> tags;
  std::optional<std::vector<std::string>> notes;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(name, xs, id, tags, notes);
  }
};

/// record without the optional: cereal loads std::optional's engaged flag as
/// a bool straight from the bytes (UBSan: invalid bool load in
/// cereal/types/optional.hpp), a known finding skipped when tolerating.
struct plain_record {
  std::string name;
  std::vector<double> xs;
  int id = 0;
  std::map<std::string, int> tags;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(name, xs, id, tags);
  }
};

using map_t = std::map<std::string, std::vector<int>>;
using tup_t = std::tuple<int, std::string>;

/// Whether the known finding @p what ("bool", "optional", "counts", "frames")
/// is to be stepped over: FUZZ_DECODE_TOLERATE_KNOWN=1 for all of them, or
/// FUZZ_DECODE_TOLERATE=bool,frames for some.
bool tolerate(const char* what) {
  const char* all = std::getenv("FUZZ_DECODE_TOLERATE_KNOWN");
  if (all && *all && *all != '0') return true;
  const char* some = std::getenv("FUZZ_DECODE_TOLERATE");
  return some && std::strstr(some, what) != nullptr;
}

[[noreturn]] void finding(const char* where, const char* what) {
  std::fprintf(stderr, "\nFINDING in %s: %s (largest refused allocation: %zu bytes)\n", where, what,
               largest_refused.load());
  std::abort();
}

/// Runs fn; decode_error is fine, other exceptions are findings (or, with
/// FUZZ_DECODE_TOLERATE_KNOWN, the known ones are let through).
template <class Fn>
void expect_value_or_decode_error(const char* where, Fn fn) {
  try {
    fn();
  } catch (const procpool::decode_error&) {
  } catch (const std::bad_alloc&) {
    if (!tolerate("counts")) finding(where, "std::bad_alloc (a corrupted size was believed)");
  } catch (const std::length_error& e) {
    if (!tolerate("counts")) finding(where, (std::string("std::length_error: ") + e.what()).c_str());
  } catch (const std::exception& e) {
    finding(where, (pd::demangle(typeid(e).name()) + ": " + e.what()).c_str());
  } catch (...) {
    finding(where, "a non-std exception");
  }
}

template <class T>
void fuzz_decode_as(const char* name, const char* p, std::size_t n) {
  expect_value_or_decode_error(name, [&] {
    pd::reader r(p, n);
    T v = pd::decode<T>(r);
    (void)v;
  });
}

// ------------------------------------------------ the engine harness

/// A job that takes results of type R and has no input of its own.
template <class R>
struct sink_job final : pd::collect_job<R> {
  std::size_t next_items(pd::byte_buffer&, std::vector<std::uint32_t>&, std::uint32_t&,
                         std::size_t, std::uint64_t&) override {
    return 0;
  }
  bool input_done() const override { return true; }
};

struct harness {
  pd::engine* eng = nullptr;
  pid_t zombie = 0;

  harness() {
    // One worker; its ring is what we write into. The real worker is killed
    // and replaced, in the engine's bookkeeping, by a zombie of ours: the
    // SIGKILL the parent sends a corrupt worker then hits nothing.
    eng = new pd::engine(procpool::pool_options{.processes = 1, .queue_bytes = 4096}, nullptr);
    auto& w = (eng->*stolen(workers_tag{}))[0];
    ::kill(w.pid, SIGKILL);
    ::waitpid(w.pid, nullptr, 0);
    zombie = ::fork();
    if (zombie == 0) ::_exit(0);
    w.pid = zombie;
  }

  auto& worker() { return (eng->*stolen(workers_tag{}))[0]; }

  void reset() {
    auto& w = worker();
    auto& shm = eng->*stolen(shm_tag{});
    const std::size_t cap = eng->*stolen(cap_tag{});
    pd::worker_shared* s = shm.worker(0);
    s->results.head = s->results.tail = 0;
    s->tasks.head = s->tasks.tail = 0;
    w.reset(pd::byte_ring(&s->tasks, shm.task_data(0), cap),
            pd::byte_ring(&s->results, shm.result_data(0), cap), 0);
    w.in.body.clear();
    w.pid = zombie;
    eng->*stolen(broken_tag{}) = nullptr;
    (eng->*stolen(disp_tag{})).abort_all(std::make_exception_ptr(std::runtime_error("reset")));
  }

  /// Writes bytes as the worker would, into its result ring.
  void produce(const char* p, std::size_t n) {
    pd::worker_shared* s = (eng->*stolen(shm_tag{})).worker(0);
    pd::byte_ring ring(&s->results, (eng->*stolen(shm_tag{})).result_data(0), eng->*stolen(cap_tag{}));
    ring.write_some(p, n);
  }

  /// A chunk of @p count items of result type R, sent and awaiting its answer.
  template <class R>
  void expect_chunk(std::uint64_t seq, std::uint64_t count) {
    pd::chunk c;
    c.owner = std::make_shared<sink_job<R>>();
    c.owner->outstanding = count;
    c.base = 0;
    c.n = count;
    c.stride = 0;
    pd::task_message::begin(c.msg);
    for (std::uint64_t i = 0; i <= count; ++i) c.offsets.push_back(0);
    // Queued and written into the (unread) task ring: its answer is due.
    auto& w = worker();
    w.out.push(std::move(c), seq, pd::monotonic_ns(),
               (eng->*stolen(shm_tag{})).worker(0)->claims);
    w.out.flush();
  }

  void drain(const char* where) {
    expect_value_or_decode_error(where, [&] { (eng->*stolen(drain_tag{}))(worker()); });
    // The pid must still be our zombie: a "bye" would have reaped it.
    if (worker().pid != zombie && worker().pid != 0) finding(where, "the engine replaced the worker");
  }
};

harness& the_harness() {
  static harness* h = new harness();  // reachable for the life of the process
  return *h;
}

constexpr std::uint64_t chunk_seq = 7;

void expect_some_chunk(harness& h, std::uint8_t sel, std::uint64_t count) {
  switch (sel % 4) {
    case 0: h.expect_chunk<std::vector<double>>(chunk_seq, count); break;
    case 1: h.expect_chunk<std::string>(chunk_seq, count); break;
    case 2: h.expect_chunk<map_t>(chunk_seq, count); break;
    default: h.expect_chunk<tup_t>(chunk_seq, count); break;
  }
}

/// Rewrites "bye" frames (which make the parent reap and re-fork) into
/// "results", and, unless the known finding is to be hit, clamps frame sizes.
void sanitize_ring_bytes(std::vector<char>& b) {
  std::size_t off = 0;
  while (off + sizeof(pd::frame_header) <= b.size()) {
    pd::frame_header h;
    std::memcpy(&h, b.data() + off, sizeof h);
    if (h.magic != pd::frame_magic) return;
    if (h.kind == static_cast<std::uint32_t>(pd::frame_kind::bye))
      h.kind = static_cast<std::uint32_t>(pd::frame_kind::results);
    if (tolerate("frames") && h.size > allocation_cap) h.size %= allocation_cap;
    std::memcpy(b.data() + off, &h, sizeof h);
    if (h.size > b.size()) return;
    off += sizeof h + static_cast<std::size_t>(h.size);
  }
}

void fuzz_frame(harness& h, pd::frame_kind kind, const std::uint8_t* data, std::size_t size) {
  std::vector<char> body(reinterpret_cast<const char*>(data), reinterpret_cast<const char*>(data) + size);
  if (kind == pd::frame_kind::results && size >= 1) {
    const std::uint8_t ctl = data[0];
    body.erase(body.begin());
    const std::uint64_t count = 1 + (ctl >> 3) % 8;
    expect_some_chunk(h, static_cast<std::uint8_t>(ctl >> 1), count);
    if ((ctl & 1) && body.size() >= sizeof(pd::result_header)) {
      pd::result_header rh;
      std::memcpy(&rh, body.data(), sizeof rh);
      rh.seq = chunk_seq;
      rh.count = count;
      std::memcpy(body.data(), &rh, sizeof rh);
    }
  }
  const pd::frame_header fh{pd::frame_magic, static_cast<std::uint32_t>(kind), body.size()};
  h.produce(reinterpret_cast<const char*>(&fh), sizeof fh);
  h.produce(body.data(), body.size());
  h.drain(kind == pd::frame_kind::results ? "on_message(results)" : "on_message(init_failed)");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t mode = data[0] % 4;
  const char* p = reinterpret_cast<const char*>(data + 1);
  const std::size_t n = size - 1;
  switch (mode) {
    case 0:
      fuzz_decode_as<std::vector<double>>("decode<std::vector<double>>", p, n);
      fuzz_decode_as<std::string>("decode<std::string>", p, n);
      fuzz_decode_as<tup_t>("decode<std::tuple<int, std::string>>", p, n);
      fuzz_decode_as<map_t>("decode<std::map<std::string, std::vector<int>>>", p, n);
      if (tolerate("optional")) {
        fuzz_decode_as<plain_record>("decode<plain_record (cereal struct)>", p, n);
        fuzz_decode_as<std::vector<plain_record>>("decode<std::vector<plain_record>>", p, n);
      } else {
        fuzz_decode_as<record>("decode<record (cereal struct)>", p, n);
        fuzz_decode_as<std::vector<record>>("decode<std::vector<record>>", p, n);
      }
      // Any byte but 0 and 1 decodes to an invalid bool (UBSan: "load of value
      // 2, which is not a valid value for type 'bool'"): a known finding.
      if (!tolerate("bool")) fuzz_decode_as<bool>("decode<bool>", p, n);
      break;
    case 1: {
      harness& h = the_harness();
      h.reset();
      if (n >= 1) expect_some_chunk(h, data[1], 1 + data[1] % 3);
      std::vector<char> bytes(p, p + n);
      sanitize_ring_bytes(bytes);
      h.produce(bytes.data(), bytes.size());
      h.drain("drain(raw ring bytes)");
      break;
    }
    case 2: {
      harness& h = the_harness();
      h.reset();
      fuzz_frame(h, pd::frame_kind::results, data + 1, n);
      break;
    }
    default: {
      harness& h = the_harness();
      h.reset();
      fuzz_frame(h, pd::frame_kind::init_failed, data + 1, n);
      break;
    }
  }
  return 0;
}
