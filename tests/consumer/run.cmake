# Installs kiln from KILN_SOURCE into WORK/prefix, builds tests/consumer against it and runs it.
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
file(REMOVE_RECURSE ${WORK})
run(${CMAKE_COMMAND} -S ${KILN_SOURCE} -B ${WORK}/kiln-build -DKILN_CUDA=OFF -DKILN_BUILD_TESTS=OFF
    -DKILN_BUILD_BENCHMARKS=OFF -DKILN_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX=${WORK}/prefix)
run(${CMAKE_COMMAND} --install ${WORK}/kiln-build)
run(${CMAKE_COMMAND} -S ${KILN_SOURCE}/tests/consumer -B ${WORK}/consumer-build -DCMAKE_PREFIX_PATH=${WORK}/prefix
    -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK}/consumer-build)
run(${WORK}/consumer-build/consumer)
