// Consumes procpool as a user would: one header, one Process, one exit code.
#include <procpool/procpool.hpp>

#include <cstdio>
#include <string>

int main() {
  procpool::Process p([](int code) { procpool::exit(code); }, 42);
  p.start();
  p.join();
  if (p.exitcode() != 42) {
    std::fprintf(stderr, "consumer: expected exit code 42, got %d\n", p.exitcode().value_or(-999));
    return 1;
  }
  const std::string version = std::to_string(PROCPOOL_VERSION_MAJOR) + "." +
                              std::to_string(PROCPOOL_VERSION_MINOR) + "." +
                              std::to_string(PROCPOOL_VERSION_PATCH);
#ifdef PROCPOOL_EXPECTED_VERSION
  if (version != PROCPOOL_EXPECTED_VERSION) {
    std::fprintf(stderr, "consumer: header version %s, package version %s\n", version.c_str(),
                 PROCPOOL_EXPECTED_VERSION);
    return 1;
  }
#endif
  std::printf("procpool %s consumer: child exit code %d\n", version.c_str(), *p.exitcode());
  return 0;
}
