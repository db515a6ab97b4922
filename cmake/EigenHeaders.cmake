# Finds Eigen's headers (3.4, header-only; the attention kernel's tile
# products) and sets EIGEN_INCLUDE_DIR, the folder holding Eigen/Core. Order:
# -DEIGEN_INCLUDE_DIR, then the EIGEN_INCLUDE_DIR environment variable, then
# Debian's libeigen3-dev from the trixie suite, fetched with `apt-get download`
# into the build tree and unpacked with `dpkg -x` (nothing is installed), as
# cmake/OrtHeaders.cmake fetches ONNX Runtime's headers. The apt source is
# derived from this machine's own Debian entry, so no mirror host is written here.

set(_eigen_header Eigen/Core)

function(_eigen_accept dir out)
  if(dir AND EXISTS "${dir}/${_eigen_header}")
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

if(NOT EIGEN_INCLUDE_DIR AND DEFINED ENV{EIGEN_INCLUDE_DIR})
  set(EIGEN_INCLUDE_DIR "$ENV{EIGEN_INCLUDE_DIR}")
endif()

if(EIGEN_INCLUDE_DIR)
  _eigen_accept("${EIGEN_INCLUDE_DIR}" _ok)
  if(NOT _ok)
    message(FATAL_ERROR "EIGEN_INCLUDE_DIR=${EIGEN_INCLUDE_DIR} does not contain ${_eigen_header}; "
                        "point it at the folder holding Eigen/ (e.g. /usr/include/eigen3)")
  endif()
  return()
endif()

set(_eigen_root "${CMAKE_BINARY_DIR}/_eigen_headers")
set(_eigen_unpacked "${_eigen_root}/root/usr/include/eigen3")
_eigen_accept("${_eigen_unpacked}" _ok)
if(_ok)
  set(EIGEN_INCLUDE_DIR "${_eigen_unpacked}")
  return()
endif()

set(_eigen_help
    "Eigen 3.4 headers are needed to build quake-onnx. Either pass "
    "-DEIGEN_INCLUDE_DIR=/path/to/eigen3 (or set the EIGEN_INCLUDE_DIR environment variable, "
    "e.g. to an unpacked Eigen 3.4 release), or build on Debian/Ubuntu with apt-get and dpkg "
    "available so the build can fetch libeigen3-dev.")

find_program(_apt_get apt-get)
find_program(_dpkg dpkg)
if(NOT _apt_get OR NOT _dpkg)
  message(FATAL_ERROR ${_eigen_help})
endif()

# The machine's Debian archive URI, from deb822 .sources files or a one-line list.
set(_debian_uri "")
file(GLOB _sources_files /etc/apt/sources.list.d/*.sources)
foreach(_f IN LISTS _sources_files)
  file(STRINGS "${_f}" _lines REGEX "^URIs:")
  foreach(_l IN LISTS _lines)
    string(REGEX MATCH "[a-z]+://[^ ]*/debian/?$" _m "${_l}")
    if(_m AND NOT _debian_uri)
      set(_debian_uri "${_m}")
    endif()
  endforeach()
endforeach()
if(NOT _debian_uri AND EXISTS /etc/apt/sources.list)
  file(STRINGS /etc/apt/sources.list _lines REGEX "^deb ")
  foreach(_l IN LISTS _lines)
    string(REGEX MATCH "[a-z]+://[^ ]*/debian/?( |$)" _m "${_l}")
    if(_m AND NOT _debian_uri)
      string(STRIP "${_m}" _debian_uri)
    endif()
  endforeach()
endif()
if(NOT _debian_uri)
  message(FATAL_ERROR "No Debian archive entry found in /etc/apt to derive a Debian source from. ${_eigen_help}")
endif()

set(EIGEN_DEBIAN_SUITE "trixie" CACHE STRING "Debian suite that provides libeigen3-dev")
file(MAKE_DIRECTORY "${_eigen_root}/lists/partial" "${_eigen_root}/cache/archives/partial" "${_eigen_root}/deb")
file(WRITE "${_eigen_root}/sources.list" "deb ${_debian_uri} ${EIGEN_DEBIAN_SUITE} main\n")
set(_apt_opts
    -o "Dir::Etc::SourceList=${_eigen_root}/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=${_eigen_root}/lists" -o "Dir::Cache=${_eigen_root}/cache"
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
message(STATUS "quake-onnx: fetching libeigen3-dev from ${_debian_uri} ${EIGEN_DEBIAN_SUITE}")
execute_process(COMMAND ${_apt_get} ${_apt_opts} -qq update
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "apt-get update for ${EIGEN_DEBIAN_SUITE} failed: ${_err} ${_eigen_help}")
endif()
execute_process(COMMAND ${_apt_get} ${_apt_opts} -qq download libeigen3-dev
                WORKING_DIRECTORY "${_eigen_root}/deb"
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
file(GLOB _debs "${_eigen_root}/deb/libeigen3-dev_*.deb")
if(NOT _rc EQUAL 0 OR NOT _debs)
  message(FATAL_ERROR "apt-get download libeigen3-dev failed: ${_err} ${_eigen_help}")
endif()
list(GET _debs 0 _deb)
execute_process(COMMAND ${_dpkg} -x "${_deb}" "${_eigen_root}/root" RESULT_VARIABLE _rc ERROR_VARIABLE _err)
_eigen_accept("${_eigen_unpacked}" _ok)
if(NOT _rc EQUAL 0 OR NOT _ok)
  message(FATAL_ERROR "Unpacking ${_deb} failed: ${_err} ${_eigen_help}")
endif()
set(EIGEN_INCLUDE_DIR "${_eigen_unpacked}")
