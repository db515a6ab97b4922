# ctest -R isa_objects: the objects compiled with -mavx2 / -mavx512* / +bf16 (the
# kernel tables and the attention blocks with their Eigen code) must not
# define weak (COMDAT) symbols. An inline function or template instantiated
# there and also in another file is merged by the linker into one copy, which
# may be the ISA-flagged one, and the scalar path would then execute AVX-512
# instructions on a CPU without them. Run as
#   cmake -DNM=nm -DOBJECTS="a.o;b.o" -P CheckIsaObjects.cmake
set(failed "")
foreach(object IN LISTS OBJECTS)
  if(NOT object MATCHES "(kernels|attention)_(avx2|avx512|avx512bf16|neonbfmmla|neonbfdot)\\.cc\\.o(bj)?$")
    continue()
  endif()
  execute_process(COMMAND "${NM}" -C --defined-only "${object}" OUTPUT_VARIABLE symbols RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${NM} failed on ${object}")
  endif()
  string(REGEX MATCH "_(avx2|avx512|avx512bf16|neonbfmmla|neonbfdot)\\.cc" _isa_part "${object}")
  set(isa "${CMAKE_MATCH_1}")
  string(REGEX MATCHALL "[^\n]* [WVu] [^\n]*" all_weak "${symbols}")
  set(weak "")
  foreach(line IN LISTS all_weak)
    # Allowed: Eigen's instantiations in the attention files, which live in a
    # namespace of their object's own (quake_eigen_<isa>, attention_flash.h),
    # so no other object defines them; and the exception tables' data word
    # pointing at the C++ personality routine (no code).
    if(line MATCHES "quake_eigen_${isa}::" OR line MATCHES " V DW\\.ref\\.__gxx_personality_v0$")
      continue()
    endif()
    list(APPEND weak "${line}")
  endforeach()
  if(weak)
    string(REPLACE ";" "\n  " weak "${weak}")
    string(APPEND failed "${object} defines weak symbols:\n  ${weak}\n")
  endif()
  message(STATUS "checked ${object}")
endforeach()
if(failed)
  message(FATAL_ERROR "${failed}Give such helpers internal linkage (an unnamed namespace) in the ISA file.")
endif()
