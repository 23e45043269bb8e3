#include "data/image.h"

#include <atomic>
#include <cstdlib>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include <jpeglib.h>
// jerror.h after jpeglib.h: the message codes (JWRN_JPEG_EOF).
#include <jerror.h>
#include <webp/decode.h>

#include "core/error.h"
#include "io/png.h"

// stb's implementations live here, with static linkage so that nothing else can clash.
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#define STBI_NO_PSD
#define STBI_NO_PIC
#define STBI_NO_JPEG  // libjpeg-turbo decodes JPEG (PIL's pixels)
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace lisadiff::data {
namespace {

bool starts_with(std::string_view bytes, std::string_view magic, std::size_t at = 0) {
  return bytes.size() >= at + magic.size() && bytes.substr(at, magic.size()) == magic;
}

std::atomic<std::int64_t> g_max_pixels{kDefaultMaxImagePixels};

void check_dimensions(std::int64_t width, std::int64_t height, const std::string& what) {
  if (width <= 0 || height <= 0) throw Error(what + ": image has no pixels (" + std::to_string(width) + "x" + std::to_string(height) + ")");
  const std::int64_t max = g_max_pixels.load();
  if (width > max || height > max || width * height > max) {  // no overflow: each side checked first
    throw Error(what + ": " + std::to_string(width) + "x" + std::to_string(height) + " image exceeds " +
                std::to_string(max) + " pixels (a decompression bomb, as PIL calls it)");
  }
}

// An uncompressed BMP (BI_RGB, BI_BITFIELDS) whose pixel rows cannot all be in the file: stb
// would read zeros past its end and return an image of them.
void check_bmp_fits(std::string_view bytes, const std::string& what) {
  if (bytes.size() < 34) return;  // stb reports a header this short
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto le32 = [&](std::size_t at) {
    return static_cast<std::uint32_t>(b[at]) | (static_cast<std::uint32_t>(b[at + 1]) << 8) |
           (static_cast<std::uint32_t>(b[at + 2]) << 16) | (static_cast<std::uint32_t>(b[at + 3]) << 24);
  };
  const std::uint32_t header = le32(14);
  if (header < 40) return;  // OS/2 BITMAPCOREHEADER: 16-bit sizes, stb checks those
  const std::int64_t offset = le32(10);
  const std::int64_t width = static_cast<std::int32_t>(le32(18));
  const std::int64_t height = std::abs(static_cast<std::int64_t>(static_cast<std::int32_t>(le32(22))));
  const std::int64_t bpp = b[28] | (b[29] << 8);
  const std::uint32_t compression = le32(30);
  if ((compression != 0 && compression != 3) || width <= 0 || bpp <= 0) return;
  check_dimensions(width, height, what);
  const std::int64_t row = (width * bpp + 31) / 32 * 4;
  if (offset + row * height > static_cast<std::int64_t>(bytes.size())) {
    throw Error(what + ": corrupt or truncated BMP (" + std::to_string(width) + "x" + std::to_string(height) +
                " pixels need " + std::to_string(offset + row * height) + " bytes, the file has " +
                std::to_string(bytes.size()) + ")");
  }
}

torch::Tensor rgb_tensor(int width, int height) {
  return torch::empty({height, width, 3}, torch::kUInt8);
}

// libjpeg reports fatal errors through error_exit, which must not return: jump back to the
// decoder with the message.
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {0};
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// As PIL: a truncated file ("premature end of JPEG file") is an error (the scripts never set
// LOAD_TRUNCATED_IMAGES), every other warning (e.g. extraneous bytes before a marker, common
// in web JPEGs) is ignored and the image decodes.
void jpeg_emit_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_error_exit(cinfo);
}

// The two phases of a JPEG decode. Each returns false after a libjpeg error; neither holds
// an object with a destructor across the setjmp, so the longjmp skips nothing.
struct JpegDecoder {
  jpeg_decompress_struct cinfo{};
  JpegError err;
  bool created = false;
  ~JpegDecoder() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

bool jpeg_read_header_or_fail(JpegDecoder& d, std::string_view bytes) {
  d.cinfo.err = jpeg_std_error(&d.err.mgr);
  d.err.mgr.error_exit = jpeg_error_exit;
  d.err.mgr.emit_message = jpeg_emit_message;
  if (setjmp(d.err.jump)) return false;
  jpeg_create_decompress(&d.cinfo);
  d.created = true;
  jpeg_mem_src(&d.cinfo, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  jpeg_read_header(&d.cinfo, TRUE);
  return true;
}

bool jpeg_decode_or_fail(JpegDecoder& d, std::uint8_t* base) {
  if (setjmp(d.err.jump)) return false;
  const std::size_t stride = static_cast<std::size_t>(d.cinfo.output_width) * 3;
  while (d.cinfo.output_scanline < d.cinfo.output_height) {
    JSAMPROW row = base + stride * d.cinfo.output_scanline;
    jpeg_read_scanlines(&d.cinfo, &row, 1);
  }
  jpeg_finish_decompress(&d.cinfo);
  return true;
}

bool jpeg_start_or_fail(JpegDecoder& d) {
  if (setjmp(d.err.jump)) return false;
  // PIL's decoder settings: the library defaults (JDCT_ISLOW, fancy upsampling) with RGB
  // output (grayscale is replicated, as convert("RGB")).
  d.cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&d.cinfo);
  return true;
}

torch::Tensor decode_jpeg(std::string_view bytes, const std::string& what) {
  JpegDecoder d;
  const auto fail = [&] { return Error(what + ": corrupt or truncated JPEG (" + d.err.message + ")"); };
  if (!jpeg_read_header_or_fail(d, bytes)) throw fail();
  if (d.cinfo.jpeg_color_space == JCS_CMYK || d.cinfo.jpeg_color_space == JCS_YCCK) {
    throw Error(what + ": CMYK/YCCK JPEGs are not supported (convert the image to RGB)");
  }
  check_dimensions(static_cast<int>(d.cinfo.image_width), static_cast<int>(d.cinfo.image_height), what);
  if (!jpeg_start_or_fail(d)) throw fail();
  auto out = rgb_tensor(static_cast<int>(d.cinfo.output_width), static_cast<int>(d.cinfo.output_height));
  if (!jpeg_decode_or_fail(d, out.data_ptr<std::uint8_t>())) throw fail();
  return out;
}

torch::Tensor decode_webp(std::string_view bytes, const std::string& what) {
  int width = 0, height = 0;
  const auto* data = reinterpret_cast<const std::uint8_t*>(bytes.data());
  if (!WebPGetInfo(data, bytes.size(), &width, &height)) throw Error(what + ": corrupt or truncated WebP");
  check_dimensions(width, height, what);
  auto out = rgb_tensor(width, height);
  const auto size = static_cast<std::size_t>(out.numel());
  if (!WebPDecodeRGBInto(data, bytes.size(), out.data_ptr<std::uint8_t>(), size, width * 3)) {
    throw Error(what + ": corrupt or truncated WebP");
  }
  return out;
}

// {width, height} from the file's header, without decoding pixels; nullopt when the header
// cannot be read (the decoder then reports the problem).
std::optional<std::pair<std::int64_t, std::int64_t>> header_size(std::string_view bytes, ImageFormat format) {
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  switch (format) {
    case ImageFormat::kPng: {
      // IHDR's big-endian width and height, read directly: stb refuses huge sizes with a
      // less helpful "too large".
      if (bytes.size() < 24) return std::nullopt;
      const auto be32 = [&](std::size_t at) {
        return (std::int64_t{data[at]} << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3];
      };
      return std::pair{be32(16), be32(20)};
    }
    case ImageFormat::kJpeg: {
      JpegDecoder d;
      if (!jpeg_read_header_or_fail(d, bytes)) return std::nullopt;
      return std::pair{std::int64_t{d.cinfo.image_width}, std::int64_t{d.cinfo.image_height}};
    }
    case ImageFormat::kWebp: {
      int width = 0, height = 0;
      if (!WebPGetInfo(data, bytes.size(), &width, &height)) return std::nullopt;
      return std::pair{std::int64_t{width}, std::int64_t{height}};
    }
    case ImageFormat::kBmp:
    case ImageFormat::kGif: {
      int width = 0, height = 0, channels = 0;
      if (!stbi_info_from_memory(data, static_cast<int>(bytes.size()), &width, &height, &channels)) return std::nullopt;
      return std::pair{std::int64_t{width}, std::int64_t{height}};
    }
    case ImageFormat::kUnknown: break;
  }
  return std::nullopt;
}

torch::Tensor decode_stb(std::string_view bytes, ImageFormat format, const std::string& what) {
  // stb reads past the end of a truncated BMP as zeros; the header's file size tells.
  if (format == ImageFormat::kBmp && bytes.size() >= 6) {
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
    const std::uint32_t declared = b[2] | (b[3] << 8) | (b[4] << 16) | (static_cast<std::uint32_t>(b[5]) << 24);
    if (declared > bytes.size()) {
      throw Error(what + ": corrupt or truncated BMP (" + std::to_string(bytes.size()) + " of " +
                  std::to_string(declared) + " bytes)");
    }
  }
  if (const auto size = header_size(bytes, format)) check_dimensions(size->first, size->second, what);
  if (format == ImageFormat::kBmp) check_bmp_fits(bytes, what);
  int width = 0, height = 0, channels = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &width,
                            &height, &channels, 3),
      stbi_image_free);
  if (!pixels) {
    throw Error(what + ": corrupt or truncated " + format_name(format) + " (" + stbi_failure_reason() + ")");
  }
  auto out = rgb_tensor(width, height);
  std::memcpy(out.data_ptr<std::uint8_t>(), pixels.get(), static_cast<std::size_t>(out.numel()));
  return out;
}

void append_bytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<std::size_t>(size));
}

void check_encodable(const std::uint8_t* rgb, int width, int height) {
  if (rgb == nullptr || width <= 0 || height <= 0) throw Error("image encoding: empty image");
}

const torch::Tensor& check_hwc(const torch::Tensor& image) {
  if (image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != torch::kUInt8 || !image.is_contiguous() ||
      !image.device().is_cpu()) {
    throw Error("image encoding: expected a contiguous CPU uint8 [H, W, 3] tensor");
  }
  return image;
}

}  // namespace

ImageFormat sniff_image_format(std::string_view bytes) {
  if (starts_with(bytes, "\xFF\xD8\xFF")) return ImageFormat::kJpeg;
  if (starts_with(bytes, "\x89PNG\r\n\x1A\n")) return ImageFormat::kPng;
  if (starts_with(bytes, "RIFF") && starts_with(bytes, "WEBP", 8)) return ImageFormat::kWebp;
  if (starts_with(bytes, "BM")) return ImageFormat::kBmp;
  if (starts_with(bytes, "GIF87a") || starts_with(bytes, "GIF89a")) return ImageFormat::kGif;
  return ImageFormat::kUnknown;
}

const char* format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kWebp: return "WebP";
    case ImageFormat::kBmp: return "BMP";
    case ImageFormat::kGif: return "GIF";
    case ImageFormat::kUnknown: break;
  }
  return "unknown format";
}

namespace {

// A PNG without its zero-length IDAT chunks (legal, and empty), or "" when it has none: stb
// copies such a chunk into a buffer it has not allocated yet (memcpy to null, undefined
// behaviour that UBSan reports; found by fuzz_image). They hold no data, so they go.
std::string without_empty_idat(std::string_view png, const io::PngChunks& layout) {
  std::string out;
  std::size_t copied = 0;
  for (const auto& chunk : layout.chunks) {
    if (chunk.length == 0 && chunk.type == "IDAT") {
      out.append(png.substr(copied, chunk.at - copied));
      copied = chunk.at + 12;
    }
  }
  if (copied == 0) return {};
  out.append(png.substr(copied));
  return out;
}

torch::Tensor decode_png(std::string_view bytes, const std::string& what) {
  const auto layout = io::png_chunks(bytes);
  // stb grows its buffer to an IDAT chunk's claimed length before reading it: 93 bytes claiming
  // a gigabyte got the gigabyte (found by fuzz_image). Image data cut off cannot decode anyway.
  // Other chunks past the end (a cut-off IEND) are stb's to judge, as PIL judges them.
  if (layout.overrun_type == "IDAT") throw Error(what + ": corrupt or truncated PNG (" + layout.problem + ")");
  const std::string cleaned = without_empty_idat(bytes, layout);
  return decode_stb(cleaned.empty() ? bytes : std::string_view(cleaned), ImageFormat::kPng, what);
}

}  // namespace

torch::Tensor decode_image(std::string_view bytes, const std::string& what) {
  if (bytes.empty()) throw Error(what + ": empty image file");
  const auto format = sniff_image_format(bytes);
  switch (format) {
    case ImageFormat::kJpeg: return decode_jpeg(bytes, what);
    case ImageFormat::kWebp: return decode_webp(bytes, what);
    case ImageFormat::kPng: return decode_png(bytes, what);
    case ImageFormat::kBmp:
    case ImageFormat::kGif: return decode_stb(bytes, format, what);
    case ImageFormat::kUnknown: break;
  }
  throw Error(what + ": not an image lisadiff can decode (JPEG, PNG, WebP, BMP or GIF expected; " +
              std::to_string(bytes.size()) + " bytes)");
}

void set_max_image_pixels(std::int64_t pixels) {
  if (pixels < 1) throw Error("max image pixels must be at least 1");
  g_max_pixels.store(pixels);
}

std::int64_t max_image_pixels() { return g_max_pixels.load(); }

std::pair<int, int> image_size(std::string_view bytes, const std::string& what) {
  const auto size = header_size(bytes, sniff_image_format(bytes));
  if (!size) throw Error(what + ": not an image lisadiff can read, or its header is corrupt");
  // The decoders' limits (no pixels, a decompression bomb) hold for the header alone too.
  check_dimensions(size->first, size->second, what);
  return {static_cast<int>(size->first), static_cast<int>(size->second)};
}

std::string encode_png(const std::uint8_t* rgb, int width, int height) {
  check_encodable(rgb, width, height);
  std::string png;
  if (!stbi_write_png_to_func(append_bytes, &png, width, height, 3, rgb, width * 3)) {
    throw Error("PNG encoding failed (stb_image_write)");
  }
  return png;
}

namespace {

// The encoder's libjpeg state; as for decoding, the setjmp lives in a function that holds no
// object with a destructor, and everything read after a longjmp is a member, not a register.
struct JpegEncoder {
  jpeg_compress_struct cinfo{};
  JpegError err;
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  bool created = false;
  ~JpegEncoder() {
    if (created) jpeg_destroy_compress(&cinfo);
    std::free(buffer);
  }
};

bool jpeg_encode_or_fail(JpegEncoder& e, const std::uint8_t* rgb, int width, int height, int quality) {
  e.cinfo.err = jpeg_std_error(&e.err.mgr);
  e.err.mgr.error_exit = jpeg_error_exit;
  if (setjmp(e.err.jump)) return false;
  jpeg_create_compress(&e.cinfo);
  e.created = true;
  jpeg_mem_dest(&e.cinfo, &e.buffer, &e.size);
  e.cinfo.image_width = static_cast<JDIMENSION>(width);
  e.cinfo.image_height = static_cast<JDIMENSION>(height);
  e.cinfo.input_components = 3;
  e.cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&e.cinfo);
  jpeg_set_quality(&e.cinfo, quality, TRUE);
  jpeg_start_compress(&e.cinfo, TRUE);
  const std::size_t stride = static_cast<std::size_t>(width) * 3;
  while (e.cinfo.next_scanline < e.cinfo.image_height) {
    JSAMPROW row = const_cast<std::uint8_t*>(rgb) + stride * e.cinfo.next_scanline;
    jpeg_write_scanlines(&e.cinfo, &row, 1);
  }
  jpeg_finish_compress(&e.cinfo);
  return true;
}

}  // namespace

std::string encode_jpeg(const std::uint8_t* rgb, int width, int height, int quality) {
  check_encodable(rgb, width, height);
  if (quality < 1 || quality > 100) throw Error("JPEG quality must be in [1, 100], got " + std::to_string(quality));
  JpegEncoder e;
  if (!jpeg_encode_or_fail(e, rgb, width, height, quality)) {
    throw Error(std::string("JPEG encoding failed (") + e.err.message + ")");
  }
  return std::string(reinterpret_cast<const char*>(e.buffer), e.size);
}

std::string encode_png(const torch::Tensor& hwc_uint8) {
  const auto& image = check_hwc(hwc_uint8);
  return encode_png(image.data_ptr<std::uint8_t>(), static_cast<int>(image.size(1)), static_cast<int>(image.size(0)));
}

std::string encode_jpeg(const torch::Tensor& hwc_uint8, int quality) {
  const auto& image = check_hwc(hwc_uint8);
  return encode_jpeg(image.data_ptr<std::uint8_t>(), static_cast<int>(image.size(1)), static_cast<int>(image.size(0)),
                     quality);
}

}  // namespace lisadiff::data
