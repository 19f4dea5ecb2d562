# The BLAS: OpenBLAS, preferring Debian's OpenMP build so that its threads and the CPU backend's
# OpenMP loops share one thread pool (the pthread build's pool and OpenMP's pool contend for the
# cores between every GEMM and elementwise pass: measured 130 ms vs 99 ms per R1 step on 2 cores).
#
# Defines the imported target cufm::blas (and CUFM_CBLAS_INCLUDE_DIR). It is looked up again
# wherever cuFM is used: this file is installed beside cufmConfig.cmake, which includes it, so the
# exported cufm::cufm names cufm::blas, never a path on the machine that built it.
if(TARGET cufm::blas)
  return()
endif()
set(_cufm_arch_dirs)
if(CMAKE_LIBRARY_ARCHITECTURE)
  set(_cufm_arch_dirs /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE})
endif()
find_library(CUFM_OPENBLAS_LIBRARY NAMES openblas
  PATHS ${_cufm_arch_dirs} PATH_SUFFIXES openblas-openmp NO_DEFAULT_PATH)
set(_cufm_inc_suffixes openblas-openmp)
if(NOT CUFM_OPENBLAS_LIBRARY)
  find_library(CUFM_OPENBLAS_LIBRARY NAMES openblas PATH_SUFFIXES openblas-pthread openblas REQUIRED)
  set(_cufm_inc_suffixes openblas-pthread openblas)
endif()
set(_cufm_inc_paths)
if(CMAKE_LIBRARY_ARCHITECTURE)
  foreach(s ${_cufm_inc_suffixes})
    list(APPEND _cufm_inc_paths /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/${s})
  endforeach()
endif()
find_path(CUFM_CBLAS_INCLUDE_DIR cblas.h PATHS ${_cufm_inc_paths} PATH_SUFFIXES ${_cufm_inc_suffixes} REQUIRED)
if(NOT cufm_FIND_QUIETLY)
  message(STATUS "cuFM BLAS: ${CUFM_OPENBLAS_LIBRARY} (cblas.h in ${CUFM_CBLAS_INCLUDE_DIR})")
endif()
# oneDNN (Debian's libdnnl-dev), when present: its sgemm beats OpenBLAS's on the shapes of the
# training step on AVX-512 CPUs (bench/results/*-gemm-providers.md), and cuFM calls it there
# (host/cpu/cpu_blas.cpp). CUFM_WITH_ONEDNN: AUTO (use it when found), ON (require it), OFF. An
# installed cuFM built with it requires it again (cufmConfig.cmake sets CUFM_WITH_ONEDNN ON).
set(CUFM_WITH_ONEDNN AUTO CACHE STRING "Use oneDNN's sgemm where it is faster: AUTO, ON or OFF")
set(CUFM_ONEDNN_FOUND FALSE)
if(NOT CUFM_WITH_ONEDNN STREQUAL "OFF")
  find_library(CUFM_DNNL_LIBRARY NAMES dnnl)
  find_path(CUFM_DNNL_INCLUDE_DIR dnnl.h)
  if(CUFM_DNNL_LIBRARY AND CUFM_DNNL_INCLUDE_DIR)
    set(CUFM_ONEDNN_FOUND TRUE)
  elseif(CUFM_WITH_ONEDNN STREQUAL "ON")
    message(FATAL_ERROR "cuFM: CUFM_WITH_ONEDNN is ON but oneDNN was not found (apt-get install libdnnl-dev)")
  endif()
endif()
if(NOT cufm_FIND_QUIETLY)
  message(STATUS "cuFM oneDNN: ${CUFM_ONEDNN_FOUND} ${CUFM_DNNL_LIBRARY}")
endif()
add_library(cufm::blas INTERFACE IMPORTED GLOBAL)
set(_cufm_blas_libs "${CUFM_OPENBLAS_LIBRARY}")
if(CUFM_ONEDNN_FOUND)
  list(APPEND _cufm_blas_libs "${CUFM_DNNL_LIBRARY}")
endif()
set_target_properties(cufm::blas PROPERTIES INTERFACE_LINK_LIBRARIES "${_cufm_blas_libs}")
