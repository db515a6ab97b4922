# Finds ONNX Runtime's C/C++ API headers (version 1.21, API 21) and sets
# ORT_INCLUDE_DIR. Order: -DORT_INCLUDE_DIR, then the ORT_INCLUDE_DIR
# environment variable, then Debian's libonnxruntime-dev from the trixie suite,
# fetched with `apt-get download` into the build tree and unpacked with
# `dpkg -x` (nothing is installed). The apt source is derived from this
# machine's own Debian entry, so no mirror host is written here.

set(_ort_header onnxruntime_cxx_api.h)

function(_ort_accept dir out)
  if(dir AND EXISTS "${dir}/${_ort_header}")
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

if(NOT ORT_INCLUDE_DIR AND DEFINED ENV{ORT_INCLUDE_DIR})
  set(ORT_INCLUDE_DIR "$ENV{ORT_INCLUDE_DIR}")
endif()

if(ORT_INCLUDE_DIR)
  _ort_accept("${ORT_INCLUDE_DIR}" _ok)
  if(NOT _ok)
    message(FATAL_ERROR "ORT_INCLUDE_DIR=${ORT_INCLUDE_DIR} does not contain ${_ort_header}; "
                        "point it at the folder holding onnxruntime_c_api.h and onnxruntime_cxx_api.h")
  endif()
  return()
endif()

set(_ort_root "${CMAKE_BINARY_DIR}/_ort_headers")
set(_ort_unpacked "${_ort_root}/root/usr/include/onnxruntime")
_ort_accept("${_ort_unpacked}" _ok)
if(_ok)
  set(ORT_INCLUDE_DIR "${_ort_unpacked}")
  return()
endif()

set(_ort_help
    "ONNX Runtime headers (1.21) are needed to build quake-onnx. Either pass "
    "-DORT_INCLUDE_DIR=/path/to/onnxruntime/include (or set the ORT_INCLUDE_DIR "
    "environment variable, e.g. to an unpacked onnxruntime release's include/), or build on "
    "Debian/Ubuntu with apt-get and dpkg available so the build can fetch libonnxruntime-dev.")

find_program(_apt_get apt-get)
find_program(_dpkg dpkg)
if(NOT _apt_get OR NOT _dpkg)
  message(FATAL_ERROR ${_ort_help})
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
  message(FATAL_ERROR "No Debian archive entry found in /etc/apt to derive a trixie source from. ${_ort_help}")
endif()

set(ORT_DEBIAN_SUITE "trixie" CACHE STRING "Debian suite that provides libonnxruntime-dev")
file(MAKE_DIRECTORY "${_ort_root}/lists/partial" "${_ort_root}/cache/archives/partial" "${_ort_root}/deb")
file(WRITE "${_ort_root}/sources.list" "deb ${_debian_uri} ${ORT_DEBIAN_SUITE} main\n")
set(_apt_opts
    -o "Dir::Etc::SourceList=${_ort_root}/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=${_ort_root}/lists" -o "Dir::Cache=${_ort_root}/cache"
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
message(STATUS "quake-onnx: fetching libonnxruntime-dev from ${_debian_uri} ${ORT_DEBIAN_SUITE}")
execute_process(COMMAND ${_apt_get} ${_apt_opts} -qq update
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "apt-get update for ${ORT_DEBIAN_SUITE} failed: ${_err} ${_ort_help}")
endif()
execute_process(COMMAND ${_apt_get} ${_apt_opts} -qq download libonnxruntime-dev
                WORKING_DIRECTORY "${_ort_root}/deb"
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
file(GLOB _debs "${_ort_root}/deb/libonnxruntime-dev_*.deb")
if(NOT _rc EQUAL 0 OR NOT _debs)
  message(FATAL_ERROR "apt-get download libonnxruntime-dev failed: ${_err} ${_ort_help}")
endif()
list(GET _debs 0 _deb)
execute_process(COMMAND ${_dpkg} -x "${_deb}" "${_ort_root}/root" RESULT_VARIABLE _rc ERROR_VARIABLE _err)
_ort_accept("${_ort_unpacked}" _ok)
if(NOT _rc EQUAL 0 OR NOT _ok)
  message(FATAL_ERROR "Unpacking ${_deb} failed: ${_err} ${_ort_help}")
endif()
set(ORT_INCLUDE_DIR "${_ort_unpacked}")
