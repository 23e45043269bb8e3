# ccache with settings that let a fresh clone (CI) hit the cache of an earlier one:
# paths are made relative to the source tree, and the PCH-related sloppiness that
# GCC precompiled headers need is switched on. The cache lives outside the clone.
option(LISADIFF_CCACHE "Compile through ccache when it is installed" ON)
set(LISADIFF_CACHE_DIR "$ENV{HOME}/.cache/lisadiff" CACHE PATH "Caches shared by every clone (venv, pip, ccache, PCH header)")
set(LISADIFF_CCACHE_DIR "${LISADIFF_CACHE_DIR}/ccache" CACHE PATH "ccache directory")
find_program(LISADIFF_CCACHE_PROGRAM ccache)
if(LISADIFF_CCACHE AND LISADIFF_CCACHE_PROGRAM)
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env
      CCACHE_DIR=${LISADIFF_CCACHE_DIR}
      CCACHE_BASEDIR=${PROJECT_SOURCE_DIR}
      CCACHE_NOHASHDIR=1
      CCACHE_MAXSIZE=5G
      CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
      ${LISADIFF_CCACHE_PROGRAM})
  # GCC needs the PCH named in the preprocessed output for ccache to hash it.
  add_compile_options(-fpch-preprocess)
  message(STATUS "lisadiff: compiling through ccache (${LISADIFF_CCACHE_DIR})")
endif()
