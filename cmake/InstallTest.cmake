# InstallTest.cmake - CTest script (cmake -P): installs the build into a fresh
# prefix, then builds examples/host/jit_lstm.c against the installed libseq the
# two usual ways, pkg-config and find_package(seq), and runs both builds on
# the PyTorch LSTM data; then builds examples/lstm.seq into a .so with the
# installed seqc and runs examples/host/aot_lstm.c on it. Variables:
# BUILD_DIR, SOURCE_DIR, WORK_DIR, CC, PKG_CONFIG.
cmake_minimum_required(VERSION 3.20)
set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${ARGN}\n${out}")
  endif()
  message(STATUS "${what}: ok ${out}")
endfunction()

run("install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})

set(data ${SOURCE_DIR}/examples/data)
set(model_args ${SOURCE_DIR}/examples/lstm.seq ${data}/lstm_weights.safetensors
    ${data}/lstm_x.npy ${data}/lstm_y.npy)
set(host ${SOURCE_DIR}/examples/host/jit_lstm.c)

# pkg-config: the flags a Makefile would use.
file(GLOB_RECURSE pc_files ${prefix}/seq.pc)
if(NOT pc_files)
  message(FATAL_ERROR "no seq.pc installed under ${prefix}")
endif()
list(GET pc_files 0 pc)
get_filename_component(pc_dir ${pc} DIRECTORY)
set(ENV{PKG_CONFIG_PATH} ${pc_dir})
execute_process(COMMAND ${PKG_CONFIG} --cflags --libs seq OUTPUT_VARIABLE flags
                RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE)
execute_process(COMMAND ${PKG_CONFIG} --variable=libdir seq OUTPUT_VARIABLE libdir
                OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0 OR NOT flags MATCHES "-lseq")
  message(FATAL_ERROR "pkg-config --cflags --libs seq: '${flags}'")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
run("cc with pkg-config" ${CC} -std=c11 ${HOST_FLAGS} -o ${WORK_DIR}/jit_lstm_pc ${host} ${flags}
    -Wl,-rpath,${libdir})
run("run (pkg-config build)" ${WORK_DIR}/jit_lstm_pc ${model_args})

# find_package(seq): a CMake host project.
file(MAKE_DIRECTORY ${WORK_DIR}/proj)
file(WRITE ${WORK_DIR}/proj/CMakeLists.txt "cmake_minimum_required(VERSION 3.20)
project(host C)
find_package(seq 0.1 REQUIRED)
add_executable(jit_lstm ${host})
target_link_libraries(jit_lstm PRIVATE seq::seq)
")
run("configure with find_package(seq)" ${CMAKE_COMMAND} -S ${WORK_DIR}/proj -B ${WORK_DIR}/proj/build
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_C_COMPILER=${CC} "-DCMAKE_C_FLAGS=${HOST_FLAGS}")
run("build with find_package(seq)" ${CMAKE_COMMAND} --build ${WORK_DIR}/proj/build)
run("run (find_package build)" ${WORK_DIR}/proj/build/jit_lstm ${model_args})

# The installed seqc building a shared object: it must find the installed
# libseqrt_cpu.a relative to itself (bin/../lib), not at a configure-time path.
# SEQ_RT_CPU_LIB would override the search, so it is cleared.
unset(ENV{SEQ_RT_CPU_LIB})
file(MAKE_DIRECTORY ${WORK_DIR}/aot)
run("installed seqc -o liblstm.so" ${prefix}/bin/seqc ${SOURCE_DIR}/examples/lstm.seq
    --weights ${data}/lstm_weights.safetensors -o ${WORK_DIR}/aot/liblstm.so)
run("cc against the generated header" ${CC} -std=c11 ${HOST_FLAGS} -I${WORK_DIR}/aot
    -o ${WORK_DIR}/aot/aot_lstm ${SOURCE_DIR}/examples/host/aot_lstm.c ${WORK_DIR}/aot/liblstm.so
    -Wl,-rpath,${WORK_DIR}/aot)
run("run (installed seqc's .so)" ${WORK_DIR}/aot/aot_lstm ${data}/lstm_weights.safetensors
    ${data}/lstm_x.npy ${data}/lstm_y.npy)
file(REMOVE_RECURSE ${WORK_DIR})
