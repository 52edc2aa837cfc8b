# Warnings and sanitizers for procpool's own targets (tests, examples, benchmarks);
# consumers of the INTERFACE target get none of this.
option(PROCPOOL_WERROR "Treat warnings as errors" OFF)
set(PROCPOOL_SANITIZE "" CACHE STRING "Sanitizers for tests and examples, e.g. address,undefined or thread")

function(procpool_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic $<$<BOOL:${PROCPOOL_WERROR}>:-Werror>)
  if(PROCPOOL_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${PROCPOOL_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${PROCPOOL_SANITIZE})
  endif()
endfunction()
