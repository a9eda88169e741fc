# Warnings and sanitizers as INTERFACE targets that every project target links.
add_library(vit_warnings INTERFACE)
target_compile_options(vit_warnings INTERFACE -Wall -Wextra -Wpedantic -Wconversion
                                              -Wno-sign-conversion)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  target_compile_options(vit_warnings INTERFACE -Wshadow=local)
endif()
# GCC 12 reports `"'" + std::string + "'"` as overlapping memcpy at -O2 and above: a false
# positive (GCC PR 105329), not a finding.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(vit_warnings INTERFACE -Wno-restrict)
endif()

add_library(vit_sanitizers INTERFACE)
if(VIT_FUZZ)
  # The fuzzers' coverage instrumentation on all project code; -fsanitize=fuzzer (the driver
  # with main) is added to the fuzz executables only.
  set(_san -fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer
           -fno-sanitize-recover=undefined)
  target_compile_options(vit_sanitizers INTERFACE ${_san})
  target_link_options(vit_sanitizers INTERFACE ${_san})
elseif(VIT_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_compile_options(vit_sanitizers INTERFACE ${_san})
  target_link_options(vit_sanitizers INTERFACE ${_san})
endif()

add_library(vit_project_options INTERFACE)
target_link_libraries(vit_project_options INTERFACE vit_warnings vit_sanitizers)
