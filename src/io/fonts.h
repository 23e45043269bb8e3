// Fonts compiled into the core library (cmake/LisadiffEmbed.cmake, lisadiff_embed_binary),
// so that figures and image grids look the same on every machine and need no font files at
// run time.
#pragma once

#include <string_view>

namespace lisadiff::io::fonts {

// DejaVu Sans (Book), the TrueType file of Debian's fonts-dejavu-core, read at configure time.
// Its licence (Bitstream Vera's, free to embed and redistribute) is in README.md's dependency
// table. Latin, Greek and Cyrillic; characters it lacks (CJK, emoji) draw as empty boxes.
std::string_view dejavu_sans();

}  // namespace lisadiff::io::fonts
