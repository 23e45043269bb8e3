// PNG files with text chunks, through libpng: the generation parameters travel inside each
// generated image (prompt, seed, steps, ...), where image viewers and tools read them back.
// Text goes into iTXt chunks (UTF-8, uncompressed), so any prompt survives as written.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace lisadiff::io {

using PngText = std::vector<std::pair<std::string, std::string>>;  // keyword, UTF-8 text

// PNG bytes of uint8 RGB pixels [H, W, 3] (a CPU tensor) with `text` chunks before the pixel
// data. Keywords: 1 to 79 printable Latin-1 characters (PNG's rule). Deterministic. Throws
// lisadiff::Error for a bad tensor or keyword.
std::string encode_png_with_text(const torch::Tensor& hwc_uint8, const PngText& text);
// encode_png_with_text written atomically (temporary file, fsync, rename).
void write_png_with_text(const std::filesystem::path& path, const torch::Tensor& hwc_uint8, const PngText& text);
// The text chunks (tEXt, zTXt, iTXt) of PNG bytes, in file order. `what` names the source in
// errors (not a PNG, corrupt).
PngText read_png_text(std::string_view bytes, const std::string& what);

// The chunk layout of PNG bytes (after the 8-byte signature, up to IEND), read without any
// decoder: decoders allocate a chunk as long as its length field says, so callers check the
// lengths against the bytes first. `problem` is empty, or says which chunk runs past the end.
struct PngChunk {
  std::string type;         // "IHDR", "IDAT", ...
  std::size_t at = 0;       // offset of the chunk's length field
  std::size_t length = 0;   // of its data (the chunk takes 12 more bytes)
};
struct PngChunks {
  std::vector<PngChunk> chunks;  // the whole chunks, in file order
  std::string problem;           // "chunk 'X' claims N bytes, the file has M left", or ""
  std::string overrun_type;      // that chunk's type ("X"), or ""
};
PngChunks png_chunks(std::string_view bytes);

}  // namespace lisadiff::io
