// procpool tests: a string that crosses a Queue as encoded bytes, so that a
// reader's buffer grows chunk by chunk (a bare string's is sized whole at its
// first chunk): a reader's growing RSS says it is in the middle of the item.
#pragma once

#include <string>

namespace procpool_test {

struct streamed {
  std::string s;
  template <class A>
  void serialize(A& a) {
    a(s);
  }
};

}  // namespace procpool_test
