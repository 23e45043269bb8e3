# Debian packages (scripts/setup.sh installs them). What each one is for is in README.md.
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)

# The torch wheel ships fmt 12 headers in its include directory, while Debian's spdlog is
# built against Debian's fmt 9. A directory that holds only links to Debian's fmt and spdlog
# headers goes in front of torch's include path, so every lisadiff file sees one fmt.
find_path(LISADIFF_FMT_INCLUDE fmt/core.h PATHS /usr/include NO_DEFAULT_PATH)
find_path(LISADIFF_SPDLOG_INCLUDE spdlog/spdlog.h PATHS /usr/include NO_DEFAULT_PATH)
if(NOT LISADIFF_FMT_INCLUDE OR NOT LISADIFF_SPDLOG_INCLUDE)
  message(FATAL_ERROR "fmt or spdlog headers not found under /usr/include: run scripts/setup.sh")
endif()
set(LISADIFF_SHIM_INCLUDE "${CMAKE_BINARY_DIR}/include-shim")
file(MAKE_DIRECTORY "${LISADIFF_SHIM_INCLUDE}")
file(CREATE_LINK "${LISADIFF_FMT_INCLUDE}/fmt" "${LISADIFF_SHIM_INCLUDE}/fmt" SYMBOLIC)
file(CREATE_LINK "${LISADIFF_SPDLOG_INCLUDE}/spdlog" "${LISADIFF_SHIM_INCLUDE}/spdlog" SYMBOLIC)
