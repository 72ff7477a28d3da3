# SeqLLVM.cmake - finds LLVM through llvm-config (LLVM's CMake package drags in
# C++ settings this C project does not want). Prefers llvm-config-19, accepts
# LLVM >= 17, and links the single shared libLLVM. Defines the imported target
# SeqLLVM::LLVM and SEQ_LLVM_VERSION.
find_program(SEQ_LLVM_CONFIG
  NAMES llvm-config-19 llvm-config-18 llvm-config-17 llvm-config
  HINTS /usr/lib/llvm-19/bin /usr/lib/llvm-18/bin /usr/lib/llvm-17/bin)
if(NOT SEQ_LLVM_CONFIG)
  message(FATAL_ERROR "llvm-config (LLVM >= 17) not found; install llvm-19-dev or set SEQ_LLVM_CONFIG")
endif()
execute_process(COMMAND ${SEQ_LLVM_CONFIG} --version OUTPUT_VARIABLE SEQ_LLVM_VERSION
                OUTPUT_STRIP_TRAILING_WHITESPACE)
if(SEQ_LLVM_VERSION VERSION_LESS 17)
  message(FATAL_ERROR "LLVM ${SEQ_LLVM_VERSION} from ${SEQ_LLVM_CONFIG} is too old (need >= 17)")
endif()
execute_process(COMMAND ${SEQ_LLVM_CONFIG} --includedir OUTPUT_VARIABLE SEQ_LLVM_INCLUDE
                OUTPUT_STRIP_TRAILING_WHITESPACE)
execute_process(COMMAND ${SEQ_LLVM_CONFIG} --libdir OUTPUT_VARIABLE SEQ_LLVM_LIBDIR
                OUTPUT_STRIP_TRAILING_WHITESPACE)
execute_process(COMMAND ${SEQ_LLVM_CONFIG} --link-shared --libs OUTPUT_VARIABLE SEQ_LLVM_LIBS
                OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REPLACE "-l" "" SEQ_LLVM_LIBNAME "${SEQ_LLVM_LIBS}")
find_library(SEQ_LLVM_LIBRARY NAMES ${SEQ_LLVM_LIBNAME} LLVM HINTS ${SEQ_LLVM_LIBDIR} NO_DEFAULT_PATH)
if(NOT SEQ_LLVM_LIBRARY)
  message(FATAL_ERROR "shared libLLVM not found in ${SEQ_LLVM_LIBDIR}")
endif()
add_library(SeqLLVM::LLVM SHARED IMPORTED)
set_target_properties(SeqLLVM::LLVM PROPERTIES
  IMPORTED_LOCATION ${SEQ_LLVM_LIBRARY}
  INTERFACE_INCLUDE_DIRECTORIES ${SEQ_LLVM_INCLUDE})
message(STATUS "LLVM ${SEQ_LLVM_VERSION}: ${SEQ_LLVM_LIBRARY}")
