# cmake -DBUILD_DIR=<procpool build tree> -DPREFIX=<prefix> -P install.cmake
# Installs procpool into a fresh PREFIX and checks the files a consumer needs are there.
foreach(_var IN ITEMS BUILD_DIR PREFIX)
  if(NOT ${_var})
    message(FATAL_ERROR "install.cmake: ${_var} is not set")
  endif()
endforeach()

file(REMOVE_RECURSE "${PREFIX}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}"
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed: ${_rc}")
endif()

foreach(_file IN ITEMS
    include/procpool/procpool.hpp
    include/procpool/process.hpp
    include/procpool/version.hpp
    include/procpool/detail/posix.hpp
    share/cmake/procpool/procpoolConfig.cmake
    share/cmake/procpool/procpoolConfigVersion.cmake
    share/cmake/procpool/procpoolTargets.cmake
    share/pkgconfig/procpool.pc)
  if(NOT EXISTS "${PREFIX}/${_file}")
    message(FATAL_ERROR "not installed: ${PREFIX}/${_file}")
  endif()
endforeach()
message(STATUS "procpool installed in ${PREFIX}")
