# cmake -DPKG_CONFIG=<pkg-config> -DCXX=<c++ compiler> -DPREFIX=<install prefix>
#       -DSOURCE=<consumer/main.cpp> -DBINARY_DIR=<scratch dir> -DEXPECTED_VERSION=<x.y.z>
#       -P pkg_config.cmake
# Builds consumer/main.cpp with nothing but `pkg-config --cflags --libs procpool` and
# -std=c++20, against procpool.pc installed in PREFIX, and runs it. PKG_CONFIG_LIBDIR is
# PREFIX's pkgconfig directory alone, so a procpool.pc elsewhere on the machine is never used.
foreach(_var IN ITEMS PKG_CONFIG CXX PREFIX SOURCE BINARY_DIR EXPECTED_VERSION)
  if(NOT ${_var})
    message(FATAL_ERROR "pkg_config.cmake: ${_var} is not set")
  endif()
endforeach()

set(ENV{PKG_CONFIG_LIBDIR} "${PREFIX}/share/pkgconfig")
unset(ENV{PKG_CONFIG_PATH})

function(pkg_config out)
  execute_process(COMMAND "${PKG_CONFIG}" ${ARGN} procpool
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "pkg-config ${ARGN} procpool failed (${_rc}): ${_err}")
  endif()
  set(${out} "${_out}" PARENT_SCOPE)
endfunction()

pkg_config(_version --modversion)
if(NOT _version STREQUAL EXPECTED_VERSION)
  message(FATAL_ERROR "procpool.pc says version '${_version}', the project is ${EXPECTED_VERSION}")
endif()

# The include directory the .pc names is PREFIX's, and holds the headers.
pkg_config(_includedir --variable=includedir)
file(REAL_PATH "${_includedir}" _includedir)
file(REAL_PATH "${PREFIX}/include" _expected_includedir)
if(NOT _includedir STREQUAL _expected_includedir)
  message(FATAL_ERROR "procpool.pc's includedir is ${_includedir}, not ${_expected_includedir}")
endif()

pkg_config(_cflags --cflags)
pkg_config(_libs --libs)
message(STATUS "pkg-config --cflags: ${_cflags}")
message(STATUS "pkg-config --libs: ${_libs}")
separate_arguments(_cflags UNIX_COMMAND "${_cflags}")
separate_arguments(_libs UNIX_COMMAND "${_libs}")

file(REMOVE_RECURSE "${BINARY_DIR}")
file(MAKE_DIRECTORY "${BINARY_DIR}")
set(_app "${BINARY_DIR}/app")
set(_deps "${BINARY_DIR}/app.d")
execute_process(
  COMMAND "${CXX}" -std=c++20 -O2 -Wall -Wextra -Werror ${_cflags}
          "-DPROCPOOL_EXPECTED_VERSION=\"${_version}\"" -MD -MF "${_deps}"
          "${SOURCE}" -o "${_app}" ${_libs}
  RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "compiling ${SOURCE} with pkg-config's flags failed: ${_rc}")
endif()

# The header compiled is PREFIX's, not one from an installed package on the default path.
file(READ "${_deps}" _deps)
string(REGEX MATCH "[^ \t\r\n\\]*/procpool/procpool\\.hpp" _header "${_deps}")
if(_header)
  file(REAL_PATH "${_header}" _header)
endif()
if(NOT _header STREQUAL "${_expected_includedir}/procpool/procpool.hpp")
  message(FATAL_ERROR "compiled procpool/procpool.hpp from '${_header}', not from ${_expected_includedir}")
endif()

execute_process(COMMAND "${_app}" RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "${_app} failed: ${_rc}")
endif()
