# Finds ONNX Runtime's C/C++ API headers (version 1.21, API 21) and sets
# ORT_INCLUDE_DIR: -DORT_INCLUDE_DIR, the ORT_INCLUDE_DIR environment
# variable, or Debian's libonnxruntime-dev (suite ORT_DEBIAN_SUITE,
# default trixie) unpacked into the build tree (cmake/DebianHeaders.cmake).

include(${CMAKE_CURRENT_LIST_DIR}/DebianHeaders.cmake)
quake_debian_headers(
  ORT_INCLUDE_DIR libonnxruntime-dev onnxruntime onnxruntime_cxx_api.h
  "ONNX Runtime headers (1.21) are needed to build quake-onnx. Either pass -DORT_INCLUDE_DIR=/path/to/onnxruntime/include (the folder holding onnxruntime_c_api.h and onnxruntime_cxx_api.h; or set the ORT_INCLUDE_DIR environment variable, e.g. to an unpacked onnxruntime release's include/), or build on Debian/Ubuntu with apt-get and dpkg available so the build can fetch libonnxruntime-dev."
)
