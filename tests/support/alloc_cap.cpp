// Linked into the test binaries that ask for it (procpool_add_test's
// CAP_ALLOCATIONS): a single allocation above 256 MiB throws std::bad_alloc
// (support/alloc_cap.hpp), so a decoder that believed a corrupted size fails
// at once. One definition per binary, as the replaced operators require.
#include "alloc_cap.hpp"

PROCPOOL_TEST_CAP_ALLOCATIONS(std::size_t{256} << 20)
