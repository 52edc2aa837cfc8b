# CPack: `cpack -G DEB` in a build tree makes libprocpool-dev_<version>_all.deb holding
# what `cmake --install` installs (headers, CMake package, procpool.pc) under /usr.
# Included by the top-level CMakeLists.txt only when procpool is the top-level project and
# installs, so a parent project's own CPack setup is left alone.
set(PROCPOOL_PACKAGE_CONTACT "procpool maintainers <maintainers@users.noreply.r-seed-e1aa7bee.example>"
    CACHE STRING "Maintainer of the Debian package")

set(CPACK_PACKAGE_NAME procpool)
set(CPACK_PACKAGE_VENDOR "procpool maintainers")
set(CPACK_PACKAGE_CONTACT "${PROCPOOL_PACKAGE_CONTACT}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
# Without a description CPack falls back to its generic template text. CPack copies the
# lines as they are into the control file, so they are kept short.
string(JOIN "\n" CPACK_PACKAGE_DESCRIPTION
  "procpool is a header-only C++20 library with the model of Python's"
  "multiprocessing: Process and Pool run C++ functions in forked worker"
  "processes and pass arguments and results through shared memory."
  "This package holds the headers, the CMake package (find_package(procpool))"
  "and a pkg-config file (procpool.pc).")
set(CPACK_RESOURCE_FILE_LICENSE "${PROJECT_SOURCE_DIR}/LICENSE")
set(CPACK_GENERATOR DEB)

# The package has headers only, so one package fits every architecture. libboost-dev and
# libcereal-dev are what find_dependency() and the headers need on the consumer's machine.
set(CPACK_DEBIAN_PACKAGE_NAME libprocpool-dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE all)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libboost-dev (>= 1.74), libcereal-dev")
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
if(PROJECT_HOMEPAGE_URL)
  set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "${PROJECT_HOMEPAGE_URL}")
endif()
# CPACK_PACKAGING_INSTALL_PREFIX stays CPack's /usr for DEB; the installed CMake package and
# procpool.pc find their prefix from where they lie, so they are right under /usr.

include(CPack)
