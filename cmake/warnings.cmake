# Warnings and sanitizers for procpool's own targets (tests, examples, benchmarks);
# consumers of the INTERFACE target get none of this.
option(PROCPOOL_WERROR "Treat warnings as errors" OFF)
set(PROCPOOL_SANITIZE "" CACHE STRING "Sanitizers for tests and examples, e.g. address,undefined or thread")

function(procpool_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic $<$<BOOL:${PROCPOOL_WERROR}>:-Werror>
    # g++ 12 warns falsely about std::string's operator+ at -O2 (GCC bug 105329).
    $<$<AND:$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>>:-Wno-restrict>)
  if(PROCPOOL_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${PROCPOOL_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${PROCPOOL_SANITIZE})
  endif()
endfunction()
