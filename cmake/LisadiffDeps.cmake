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

# TensorBoard event files (src/io/tensorboard.cpp): protobuf (Debian's 3.21, the lite runtime)
# for the Event/Summary messages generated from src/io/tfevent.proto, and Boost.CRC (header
# only) for the TFRecords' CRC-32C. The torch wheel ships protobuf 3.13 headers in its include
# directory too; a link in the same shim puts Debian's google/protobuf first, so the
# generated code and every file that includes it see the headers of the library they link.
find_package(Protobuf 3.21 REQUIRED)
find_package(Boost 1.74 REQUIRED)
find_path(LISADIFF_PROTOBUF_INCLUDE google/protobuf/message_lite.h PATHS /usr/include NO_DEFAULT_PATH)
if(NOT LISADIFF_PROTOBUF_INCLUDE)
  message(FATAL_ERROR "protobuf headers not found under /usr/include: run scripts/setup.sh (Debian libprotobuf-dev)")
endif()
file(MAKE_DIRECTORY "${LISADIFF_SHIM_INCLUDE}/google")
file(CREATE_LINK "${LISADIFF_PROTOBUF_INCLUDE}/google/protobuf" "${LISADIFF_SHIM_INCLUDE}/google/protobuf" SYMBOLIC)

# utf8proc (Unicode 15 data: NFC, general categories, case mapping) for the CLIP tokenizer;
# src/models/clip_tokenizer.cpp says why it, and not RE2, does the tokenizer's Unicode work.
# Not PkgConfig::UTF8PROC: its Cflags add -DUTF8PROC_EXPORTS (meaningful only for Windows DLLs),
# which would change the flags of every core object and of the shared precompiled header.
find_package(PkgConfig REQUIRED)
pkg_check_modules(UTF8PROC REQUIRED libutf8proc)
add_library(lisadiff_utf8proc INTERFACE IMPORTED)
target_include_directories(lisadiff_utf8proc INTERFACE ${UTF8PROC_INCLUDE_DIRS})
target_link_libraries(lisadiff_utf8proc INTERFACE ${UTF8PROC_LINK_LIBRARIES})

# stb (header-only as lisadiff uses it): each implementation is compiled, with its functions
# static, into the sources that need it: src/data/image.cpp (stb_image, stb_image_write) and
# src/io/tensorboard.cpp (stb_image_write, for the PNGs of image summaries).
find_path(LISADIFF_STB_INCLUDE stb/stb_image_write.h)
if(NOT LISADIFF_STB_INCLUDE)
  message(FATAL_ERROR "stb headers (stb/stb_image_write.h) not found: run scripts/setup.sh (Debian libstb-dev)")
endif()

# Gloo's headers (Debian's libgloo-dev), for the declarations of c10d's ProcessGroupGloo in
# src/train/distributed.cpp: the Gloo that runs is the one inside libtorch_cpu, nothing links
# Debian's library. Multi-process training on CPU (lisadiff launch) needs them.
find_path(LISADIFF_GLOO_INCLUDE gloo/rendezvous/store.h)
if(NOT LISADIFF_GLOO_INCLUDE)
  message(FATAL_ERROR "Gloo headers (gloo/rendezvous/store.h) not found: run scripts/setup.sh (Debian libgloo-dev)")
endif()

# Image codecs and tar shards for the data pipeline (src/data/): libjpeg-turbo decodes JPEG
# with the settings PIL uses (so pixels match the Python scripts), libwebp decodes WebP,
# libarchive reads and writes webdataset tar shards (stb handles PNG and the rest), libpng
# writes and reads PNG text chunks (the generation parameters inside generated images).
# Imported without pkg-config's Cflags for the same reason as utf8proc above.
pkg_check_modules(LISADIFF_CODECS REQUIRED libarchive libjpeg libwebp libpng)
add_library(lisadiff_codecs INTERFACE IMPORTED)
target_include_directories(lisadiff_codecs INTERFACE ${LISADIFF_CODECS_INCLUDE_DIRS})
target_link_libraries(lisadiff_codecs INTERFACE ${LISADIFF_CODECS_LINK_LIBRARIES})

# Figures and image grids (src/io/canvas.h): cairo draws (anti-aliased paths, text, image
# scaling, PNG encoding), FreeType loads the font that the core library carries compiled in
# (DejaVu Sans from Debian's fonts-dejavu-core, read here at configure time), so nothing at
# run time depends on a font being installed. Imported without pkg-config's Cflags, as above.
# Their headers live in folders of their own (/usr/include/cairo, freetype2, glib-2.0, ...):
# src/CMakeLists.txt gives those folders to src/io/canvas.cpp alone, so that the flags of
# every other object and of the precompiled header, and with them their ccache entries, stay
# as they are.
pkg_check_modules(LISADIFF_CAIRO REQUIRED cairo cairo-ft freetype2)
add_library(lisadiff_cairo INTERFACE IMPORTED)
target_link_libraries(lisadiff_cairo INTERFACE ${LISADIFF_CAIRO_LINK_LIBRARIES})
find_file(LISADIFF_FONT_FILE DejaVuSans.ttf PATHS /usr/share/fonts/truetype/dejavu NO_DEFAULT_PATH)
if(NOT LISADIFF_FONT_FILE)
  message(FATAL_ERROR "DejaVuSans.ttf not found under /usr/share/fonts/truetype/dejavu: run scripts/setup.sh "
                      "(Debian fonts-dejavu-core)")
endif()
