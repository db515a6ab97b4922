# quake_debian_headers(VAR PACKAGE SUBDIR HEADER HELP): sets VAR (in the
# caller's scope) to a folder holding HEADER. Order: -DVAR, then the VAR
# environment variable, then Debian's PACKAGE from the suite in the cache
# variable NAME_DEBIAN_SUITE (default trixie; NAME is VAR without
# _INCLUDE_DIR), fetched with `apt-get download` into the build tree
# (_name_headers/) and unpacked with `dpkg -x` (nothing is installed), whose
# /usr/include/SUBDIR is the answer. The apt source is derived from this
# machine's own Debian entry, so no mirror host is written here. Any failure
# is one FATAL_ERROR that ends with HELP.
#
# Third-party headers come from registry packages at build time, never from
# this repository (cmake/OrtHeaders.cmake, cmake/EigenHeaders.cmake).

function(quake_debian_headers var package subdir header help)
  if(NOT ${var} AND DEFINED ENV{${var}})
    set(${var} "$ENV{${var}}")
  endif()
  if(${var})
    if(NOT EXISTS "${${var}}/${header}")
      message(FATAL_ERROR "${var}=${${var}} does not contain ${header}. ${help}")
    endif()
    set(${var} "${${var}}" PARENT_SCOPE)
    return()
  endif()

  string(REGEX REPLACE "_INCLUDE_DIR$" "" name "${var}")
  string(TOLOWER "${name}" lower)
  set(root "${CMAKE_BINARY_DIR}/_${lower}_headers")
  set(unpacked "${root}/root/usr/include/${subdir}")
  if(EXISTS "${unpacked}/${header}")
    set(${var} "${unpacked}" PARENT_SCOPE)
    return()
  endif()

  find_program(_apt_get apt-get)
  find_program(_dpkg dpkg)
  if(NOT _apt_get OR NOT _dpkg)
    message(FATAL_ERROR "apt-get and dpkg are not available. ${help}")
  endif()
  _quake_debian_uri(uri)
  if(NOT uri)
    message(FATAL_ERROR "No Debian archive entry found in /etc/apt to derive a Debian source from. ${help}")
  endif()

  set(${name}_DEBIAN_SUITE "trixie" CACHE STRING "Debian suite that provides ${package}")
  set(suite "${${name}_DEBIAN_SUITE}")
  file(MAKE_DIRECTORY "${root}/lists/partial" "${root}/cache/archives/partial" "${root}/deb")
  file(WRITE "${root}/sources.list" "deb ${uri} ${suite} main\n")
  set(apt_opts
      -o "Dir::Etc::SourceList=${root}/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=${root}/lists" -o "Dir::Cache=${root}/cache"
      -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
  message(STATUS "quake-onnx: fetching ${package} from ${uri} ${suite}")
  execute_process(COMMAND ${_apt_get} ${apt_opts} -qq update RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "apt-get update for ${suite} failed: ${err} ${help}")
  endif()
  execute_process(COMMAND ${_apt_get} ${apt_opts} -qq download ${package}
                  WORKING_DIRECTORY "${root}/deb" RESULT_VARIABLE rc ERROR_VARIABLE err)
  file(GLOB debs "${root}/deb/${package}_*.deb")
  if(NOT rc EQUAL 0 OR NOT debs)
    message(FATAL_ERROR "apt-get download ${package} failed: ${err} ${help}")
  endif()
  list(GET debs 0 deb)
  execute_process(COMMAND ${_dpkg} -x "${deb}" "${root}/root" RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT EXISTS "${unpacked}/${header}")
    message(FATAL_ERROR "Unpacking ${deb} failed: ${err} ${help}")
  endif()
  set(${var} "${unpacked}" PARENT_SCOPE)
endfunction()

# The machine's Debian archive URI, from deb822 .sources files or a one-line list.
function(_quake_debian_uri out)
  file(GLOB sources_files /etc/apt/sources.list.d/*.sources)
  foreach(f IN LISTS sources_files)
    file(STRINGS "${f}" lines REGEX "^URIs:")
    foreach(l IN LISTS lines)
      string(REGEX MATCH "[a-z]+://[^ ]*/debian/?$" m "${l}")
      if(m)
        set(${out} "${m}" PARENT_SCOPE)
        return()
      endif()
    endforeach()
  endforeach()
  if(EXISTS /etc/apt/sources.list)
    file(STRINGS /etc/apt/sources.list lines REGEX "^deb ")
    foreach(l IN LISTS lines)
      string(REGEX MATCH "[a-z]+://[^ ]*/debian/?( |$)" m "${l}")
      if(m)
        string(STRIP "${m}" m)
        set(${out} "${m}" PARENT_SCOPE)
        return()
      endif()
    endforeach()
  endif()
  set(${out} "" PARENT_SCOPE)
endfunction()
