# ctest -R isa_objects: the objects compiled with -mavx2 / -mavx512* must not
# define weak (COMDAT) symbols. An inline function or template instantiated
# there and also in another file is merged by the linker into one copy, which
# may be the ISA-flagged one, and the scalar path would then execute AVX-512
# instructions on a CPU without them. Run as
#   cmake -DNM=nm -DOBJECTS="a.o;b.o" -P CheckIsaObjects.cmake
set(failed "")
foreach(object IN LISTS OBJECTS)
  if(NOT object MATCHES "kernels_(avx2|avx512)\\.cc\\.o(bj)?$")
    continue()
  endif()
  execute_process(COMMAND "${NM}" -C --defined-only "${object}" OUTPUT_VARIABLE symbols RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${NM} failed on ${object}")
  endif()
  string(REGEX MATCHALL "[^\n]* [WVu] [^\n]*" weak "${symbols}")
  if(weak)
    string(REPLACE ";" "\n  " weak "${weak}")
    string(APPEND failed "${object} defines weak symbols:\n  ${weak}\n")
  endif()
  message(STATUS "checked ${object}")
endforeach()
if(failed)
  message(FATAL_ERROR "${failed}Give such helpers internal linkage (an unnamed namespace) in the ISA file.")
endif()
