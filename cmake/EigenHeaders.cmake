# Finds Eigen's headers (3.4, header-only; the attention kernel's tile
# products) and sets EIGEN_INCLUDE_DIR, the folder holding Eigen/Core:
# -DEIGEN_INCLUDE_DIR, the EIGEN_INCLUDE_DIR environment variable, or Debian's
# libeigen3-dev (suite EIGEN_DEBIAN_SUITE, default trixie) unpacked into
# the build tree (cmake/DebianHeaders.cmake).

include(${CMAKE_CURRENT_LIST_DIR}/DebianHeaders.cmake)
quake_debian_headers(
  EIGEN_INCLUDE_DIR libeigen3-dev eigen3 Eigen/Core
  "Eigen 3.4 headers are needed to build quake-onnx. Either pass -DEIGEN_INCLUDE_DIR=/path/to/eigen3 (the folder holding Eigen/; or set the EIGEN_INCLUDE_DIR environment variable, e.g. to an unpacked Eigen 3.4 release), or build on Debian/Ubuntu with apt-get and dpkg available so the build can fetch libeigen3-dev."
)
