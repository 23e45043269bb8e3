#include "io/png.h"

#include <png.h>

#include <csetjmp>
#include <cstring>

#include <fmt/format.h>

#include "core/error.h"
#include "io/atomic_file.h"

namespace lisadiff::io {
namespace {

// libpng reports errors through longjmp; the message is kept here and thrown as a
// lisadiff::Error once control is back in C++ frames that own nothing.
struct ErrorState {
  std::string message;
};

void on_error(png_structp png, png_const_charp message) {
  static_cast<ErrorState*>(png_get_error_ptr(png))->message = message;
  png_longjmp(png, 1);
}
void on_warning(png_structp, png_const_charp) {}

void append(png_structp png, png_bytep data, png_size_t size) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), size);
}
void no_flush(png_structp) {}

struct Reading {
  std::string_view bytes;
  std::size_t at = 0;
};
void take(png_structp png, png_bytep out, png_size_t size) {
  auto* r = static_cast<Reading*>(png_get_io_ptr(png));
  if (r->bytes.size() - r->at < size) png_error(png, "truncated");
  std::memcpy(out, r->bytes.data() + r->at, size);
  r->at += size;
}

void check_keyword(const std::string& key) {
  if (key.empty() || key.size() > 79) throw Error(fmt::format("PNG text keyword '{}' must have 1 to 79 characters", key));
  for (unsigned char ch : key) {
    if (ch < 32 || (ch > 126 && ch < 161)) throw Error(fmt::format("PNG text keyword '{}' has a non-printable character", key));
  }
}

}  // namespace

namespace {

// The libpng part of encode_png_with_text, apart from the C++ objects it builds first: a
// longjmp out of libpng must cross no destructor and clobber no local that is live after it.
void write_png(std::string& out, const std::uint8_t* data, png_uint_32 width, png_uint_32 height,
               std::vector<png_text>& chunks) {
  ErrorState state;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &state, on_error, on_warning);
  if (!png) throw Error("encode_png_with_text: out of memory");
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw Error("encode_png_with_text: " + (state.message.empty() ? std::string("out of memory") : state.message));
  }
  png_set_write_fn(png, &out, append, no_flush);
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
  png_write_info(png, info);
  for (png_uint_32 y = 0; y < height; ++y) png_write_row(png, const_cast<png_bytep>(data + static_cast<std::size_t>(y) * width * 3));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
}

}  // namespace

std::string encode_png_with_text(const torch::Tensor& image, const PngText& text) {
  if (!image.defined() || image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != torch::kUInt8 ||
      !image.device().is_cpu()) {
    throw Error("encode_png_with_text: expected a CPU uint8 tensor [H, W, 3]");
  }
  for (const auto& [key, value] : text) check_keyword(key);
  const auto pixels = image.contiguous();
  std::vector<png_text> chunks(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    std::memset(&chunks[i], 0, sizeof(png_text));
    chunks[i].compression = PNG_ITXT_COMPRESSION_NONE;
    chunks[i].key = const_cast<char*>(text[i].first.c_str());
    chunks[i].text = const_cast<char*>(text[i].second.c_str());
    chunks[i].itxt_length = text[i].second.size();
    chunks[i].lang = const_cast<char*>("");
    chunks[i].lang_key = const_cast<char*>("");
  }
  std::string out;
  write_png(out, pixels.data_ptr<std::uint8_t>(), static_cast<png_uint_32>(pixels.size(1)),
            static_cast<png_uint_32>(pixels.size(0)), chunks);
  return out;
}

void write_png_with_text(const std::filesystem::path& path, const torch::Tensor& image, const PngText& text) {
  write_file_atomic(path, encode_png_with_text(image, text));
}

PngChunks png_chunks(std::string_view bytes) {
  PngChunks out;
  for (std::size_t at = 8; at + 8 <= bytes.size();) {
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data()) + at;
    const std::uint64_t length = (std::uint64_t{b[0]} << 24) | (b[1] << 16) | (b[2] << 8) | b[3];
    std::string type(bytes.substr(at + 4, 4));
    if (length + 12 > bytes.size() - at) {
      out.problem = "chunk '" + type + "' claims " + std::to_string(length) + " bytes, the file has " +
                    std::to_string(bytes.size() - at) + " left";
      out.overrun_type = std::move(type);
      break;
    }
    out.chunks.push_back({std::move(type), at, static_cast<std::size_t>(length)});
    at += 12 + static_cast<std::size_t>(length);
    if (out.chunks.back().type == "IEND") break;
  }
  return out;
}

PngText read_png_text(std::string_view bytes, const std::string& what) {
  if (bytes.size() < 8 || png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) != 0) {
    throw Error(what, "not a PNG file");
  }
  // libpng allocates a text chunk as long as its length field says before reading it: a few
  // bytes claiming a 1.7 GB chunk got that much memory (found by fuzz_image). All the bytes are
  // here, so every chunk's length is checked against what is left of them first.
  if (const auto layout = png_chunks(bytes); !layout.problem.empty()) throw Error(what, "corrupt PNG: " + layout.problem);
  ErrorState state;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, on_error, on_warning);
  if (!png) throw Error(what, "out of memory");
  png_infop info = png_create_info_struct(png);
  png_infop end = png_create_info_struct(png);
  Reading reading{bytes, 0};
  PngText out;
  std::vector<png_byte> row;  // before setjmp: a longjmp must not skip a destructor
  if (!info || !end || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, &end);
    throw Error(what, "corrupt PNG: " + (state.message.empty() ? std::string("out of memory") : state.message));
  }
  png_set_read_fn(png, &reading, take);
  png_read_info(png, info);
  // Text may also follow the pixel data: read the rows (discarded), then the end chunks.
  row.resize(png_get_rowbytes(png, info));
  const int passes = png_set_interlace_handling(png);
  const auto height = png_get_image_height(png, info);
  for (int pass = 0; pass < passes; ++pass) {
    for (png_uint_32 y = 0; y < height; ++y) png_read_row(png, row.data(), nullptr);
  }
  png_read_end(png, end);
  for (png_infop i : {info, end}) {
    png_textp chunks = nullptr;
    const int n = png_get_text(png, i, &chunks, nullptr);
    for (int k = 0; k < n; ++k) {
      const std::size_t length = chunks[k].compression >= PNG_ITXT_COMPRESSION_NONE ? chunks[k].itxt_length
                                                                                    : chunks[k].text_length;
      out.emplace_back(chunks[k].key, std::string(chunks[k].text, length));
    }
  }
  png_destroy_read_struct(&png, &info, &end);
  return out;
}

}  // namespace lisadiff::io
