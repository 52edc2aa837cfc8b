// ODR check: two translation units include the umbrella header and are linked
// into one binary; any non-inline definition in a header breaks the link.
#include <procpool/procpool.hpp>

int odr_a() { return static_cast<int>(procpool::cpu_count()); }
