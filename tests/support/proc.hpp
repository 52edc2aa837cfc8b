// procpool tests: what /proc says about processes, fds, memory and /dev/shm.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <dirent.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

namespace procpool_test {

/// The state letter of /proc/<pid>/stat ('R', 'S', 'Z', ...); 0 when there is
/// no such process.
inline char proc_state(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!f || !std::getline(f, s)) return 0;
  const auto rp = s.rfind(')');
  if (rp == std::string::npos || rp + 2 >= s.size()) return 0;
  return s[rp + 2];
}

/// The ppid field of /proc/<pid>/stat, or -1.
inline pid_t proc_ppid(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!f || !std::getline(f, s)) return -1;
  const auto rp = s.rfind(')');
  if (rp == std::string::npos) return -1;
  std::istringstream is(s.substr(rp + 2));
  char st;
  pid_t ppid = -1;
  is >> st >> ppid;
  return ppid;
}

/// No process has this pid any more: it ended and was reaped (not a zombie).
inline bool reaped(pid_t pid) { return ::kill(pid, 0) == -1 && errno == ESRCH; }

/// The process has ended: reaped, or a zombie waiting to be.
inline bool ended(pid_t pid) {
  if (reaped(pid)) return true;
  const char st = proc_state(pid);
  return st == 0 || st == 'Z' || st == 'X';
}

/// The names in a directory, without "." and "..".
inline std::set<std::string> dir_names(const char* path) {
  std::set<std::string> names;
  if (DIR* d = ::opendir(path)) {
    while (dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.insert(e->d_name);
    ::closedir(d);
  }
  return names;
}

inline std::size_t open_fds() { return dir_names("/proc/self/fd").size(); }

/// The names in /dev/shm. Other programs may add and remove theirs meanwhile:
/// tests check that no new name is left (new_names), not the count.
inline std::set<std::string> shm_names() { return dir_names("/dev/shm"); }

/// How many names of @p after are not in @p before.
inline std::size_t new_names(const std::set<std::string>& before, const std::set<std::string>& after) {
  std::size_t n = 0;
  for (const auto& name : after) n += before.count(name) == 0;
  return n;
}

/// Children of this process: the union of /proc/self/task/*/children.
inline std::set<pid_t> child_pids() {
  std::set<pid_t> r;
  for (const auto& task : dir_names("/proc/self/task")) {
    std::ifstream f("/proc/self/task/" + task + "/children");
    pid_t p;
    while (f >> p) r.insert(p);
  }
  return r;
}

/// Resident bytes of process @p pid (0: this one).
inline std::size_t rss_bytes(pid_t pid = 0) {
  std::ifstream f(pid ? "/proc/" + std::to_string(pid) + "/statm" : std::string("/proc/self/statm"));
  std::size_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// The VmFlags of the mapping holding @p p, from /proc/self/smaps ("" if none).
inline std::string vm_flags_at(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return "";
  char line[512];
  bool inside = false;
  std::string flags;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, ':') > std::strchr(line, ' ')) {
      inside = a >= lo && a < hi;
    } else if (inside && std::strncmp(line, "VmFlags:", 8) == 0) {
      flags = line + 8;
      break;
    }
  }
  std::fclose(f);
  return flags;
}

}  // namespace procpool_test
