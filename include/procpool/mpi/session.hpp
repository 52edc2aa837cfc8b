// procpool: Python's multiprocessing model for C++20.
// SPDX-License-Identifier: BSL-1.0
#pragma once

/// @file session.hpp
/// procpool::mpi::session: this process's place among the MPI ranks, and MPI's lifetime.

#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../errors.hpp"
#include "detail/transport.hpp"

namespace procpool::mpi {

/// MPI for procpool, one per process, built first thing in main() on every
/// rank. Rank 0 is the master: it runs the program's calls; every other rank
/// serves the pools rank 0 builds.
///
/// MPI itself starts late: the first mpi::Pool forks its local workers on a
/// serving rank first, then starts MPI (forking once MPI is up is unsafe on
/// some networks). The rank is read from the launcher's environment until
/// then (mpirun, srun). The destructor ends MPI if this session started it.
/// @code
/// int main(int argc, char** argv) {
///   procpool::mpi::session mpi(argc, argv);
///   procpool::mpi::Pool pool(work);        // serving ranks serve here, until rank 0 closes it
///   if (!mpi.is_master()) return 0;
///   auto r = pool.map(inputs);
/// }
/// @endcode
class session {
 public:
  /// Reads this rank's place from the launcher's environment (MPI starts later).
  /// @throws usage_error when another session exists in this process.
  session(int& argc, char**& argv);
  ~session();
  session(const session&) = delete;
  session& operator=(const session&) = delete;

  /// This process's rank in MPI_COMM_WORLD.
  int rank() const noexcept { return rank_; }
  /// The number of ranks.
  int size() const noexcept { return size_; }
  /// True on rank 0, which runs the program's calls.
  bool is_master() const noexcept { return rank_ == 0; }
  /// Ranks sharing this node (from the launcher; 1 when it does not say).
  int local_size() const noexcept { return local_size_; }
  /// This node's host name.
  const std::string& host() const noexcept { return host_; }
  /// procpool's own communicator (a duplicate of MPI_COMM_WORLD); starts MPI if it is not yet.
  MPI_Comm comm();
  /// True once comm() has started MPI here (or found it started).
  bool mpi_running() const noexcept { return comm_ != MPI_COMM_NULL; }

  /// The session of this process. @throws usage_error when there is none.
  static session& current();

  /// The next pool's serial number: every rank builds the same pools in the same order.
  std::uint64_t next_serial() noexcept { return ++serial_; }
  /// Rank 0's pools that are open (not joined or terminated): at most one.
  int& open_pools() noexcept { return open_pools_; }
  /// Rank 0 gave up on @p rank (silent): the destructor ends the job,
  /// since MPI_Finalize would wait for that rank for ever.
  void note_lost(int rank, const std::string& host, pid_t pid) {
    lost_ += (lost_.empty() ? "" : ", ") + std::to_string(rank) + " (host " + host + ")";
    if (host == host_ && pid > 0)
      lost_here_.push_back(pid);
    else
      lost_elsewhere_ = true;
  }

 private:
  static int env_int(const char* const* names, int fallback) {
    for (; *names; ++names)
      if (const char* v = std::getenv(*names); v && *v) return std::atoi(v);
    return fallback;
  }
  static session*& instance() {
    static session* s = nullptr;
    return s;
  }
  void start();

  int* argc_;
  char*** argv_;
  int rank_ = 0;
  int size_ = 1;
  int local_size_ = 1;
  bool known_ = false;  // the launcher said where we are
  bool started_ = false;
  MPI_Comm comm_ = MPI_COMM_NULL;
  std::string host_;
  std::uint64_t serial_ = 0;
  int open_pools_ = 0;
  std::string lost_;               // the ranks rank 0 gave up on
  std::vector<pid_t> lost_here_;   // those of them on this host
  bool lost_elsewhere_ = false;    // and on other hosts
};

// ---------------------------------------------------------------------------

inline session::session(int& argc, char**& argv) : argc_(&argc), argv_(&argv) {
  if (instance())
    throw usage_error("procpool::mpi::session: a session exists already in this process; "
                      "build one, first thing in main()");
  static const char* const rank_vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK",
                                          "SLURM_PROCID", nullptr};
  static const char* const size_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS",
                                          nullptr};
  static const char* const local_vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                                           nullptr};
  rank_ = env_int(rank_vars, -1);
  size_ = env_int(size_vars, -1);
  local_size_ = env_int(local_vars, 1);
  known_ = rank_ >= 0 && size_ > 0;
  char h[256] = {};
  ::gethostname(h, sizeof h - 1);
  host_ = h;
  if (!known_) {
    // No launcher we know (or a singleton run): ask MPI now.
    start();
  }
  instance() = this;
}

inline session::~session() {
  instance() = nullptr;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (!lost_.empty()) {
    std::fprintf(stderr,
                 "procpool::mpi: rank(s) %s stopped answering; ending the job, since "
                 "MPI_Finalize would wait for them\n",
                 lost_.c_str());
    // A stopped process takes no SIGTERM: those on this host are killed here,
    // and the launcher, seeing a rank killed, ends the job, this process too.
    // Only for ranks elsewhere is MPI_Abort the way (one ending at a time:
    // Open MPI's launcher can hang when both happen at once).
    for (pid_t p : lost_here_) ::kill(p, SIGKILL);
    if (lost_elsewhere_) MPI_Abort(MPI_COMM_WORLD, 1);
    for (int i = 0; i < 100; ++i) ::usleep(100'000);
    std::_Exit(1);  // a launcher that goes on without the killed ranks
  }
  if (comm_ != MPI_COMM_NULL) {
    if (rank_ == 0) {
      // A serving rank still waiting to open a pool learns that it never will.
      detail::byte_buffer m;
      detail::begin_message(m, detail::kind::ended, 0);
      detail::seal(m);
      for (int r = 1; r < size_; ++r)
        MPI_Send(m.data(), static_cast<int>(m.size()), MPI_BYTE, r, detail::tag_first, comm_);
    }
    MPI_Comm_free(&comm_);
  }
  if (started_) MPI_Finalize();
}

inline void session::start() {
  if (started_) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // The master's progress thread makes the MPI calls while the program's
    // threads wait; one thread at a time.
    int provided = 0;
    detail::check_mpi(MPI_Init_thread(argc_, argv_, MPI_THREAD_SERIALIZED, &provided),
                      "MPI_Init_thread");
    started_ = true;
    if (provided < MPI_THREAD_SERIALIZED)
      throw error("procpool::mpi: this MPI library does not allow calls from more than one "
                  "thread (MPI_THREAD_SERIALIZED); build it with thread support");
  }
  detail::check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

inline MPI_Comm session::comm() {
  if (comm_ == MPI_COMM_NULL) start();
  return comm_;
}

inline session& session::current() {
  if (!instance())
    throw usage_error("procpool::mpi: no session; build a procpool::mpi::session(argc, argv) "
                      "first thing in main(), on every rank");
  return *instance();
}

}  // namespace procpool::mpi
