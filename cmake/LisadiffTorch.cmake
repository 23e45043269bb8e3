# LibTorch from the PyPI torch wheel in the project's venv, checked against the single
# pin in requirements.txt. scripts/setup.sh passes LISADIFF_PYTHON (the venv's python).
file(STRINGS "${PROJECT_SOURCE_DIR}/requirements.txt" _torch_pin_line REGEX "^torch==")
string(REGEX REPLACE "^torch==([0-9.]+).*$" "\\1" LISADIFF_TORCH_PIN "${_torch_pin_line}")
if(NOT LISADIFF_TORCH_PIN)
  message(FATAL_ERROR "requirements.txt has no 'torch==X.Y.Z' line: the LibTorch pin is missing")
endif()

set(LISADIFF_PYTHON "" CACHE FILEPATH "Python of the venv that holds the pinned torch wheel")
if(LISADIFF_PYTHON)
  execute_process(
    COMMAND "${LISADIFF_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _torch_rc ERROR_VARIABLE _torch_err)
  if(NOT _torch_rc EQUAL 0)
    message(FATAL_ERROR "LISADIFF_PYTHON=${LISADIFF_PYTHON} cannot import torch: ${_torch_err}\n"
                        "Run scripts/setup.sh, which creates the venv with torch==${LISADIFF_TORCH_PIN}.")
  endif()
  list(PREPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
endif()

# Torch's CMake config warns about CUDA settings that do not concern a C++ consumer.
set(TORCH_CUDA_ARCH_LIST "8.0;9.0" CACHE STRING "")
find_package(Torch QUIET)
if(NOT Torch_FOUND)
  message(FATAL_ERROR "LibTorch not found. Run scripts/setup.sh, or pass "
                      "-DLISADIFF_PYTHON=<venv>/bin/python of a venv with torch==${LISADIFF_TORCH_PIN}.")
endif()
if(NOT Torch_VERSION VERSION_EQUAL LISADIFF_TORCH_PIN)
  message(FATAL_ERROR "LibTorch ${Torch_VERSION} found (${TORCH_INSTALL_PREFIX}), but lisadiff is pinned "
                      "to torch==${LISADIFF_TORCH_PIN} in requirements.txt. Run scripts/setup.sh.")
endif()
message(STATUS "lisadiff: LibTorch ${Torch_VERSION} from ${TORCH_INSTALL_PREFIX}")
