#include "io/canvas.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <cairo-ft.h>
#include <cairo.h>
#include <ft2build.h>
#include FT_FREETYPE_H

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/fonts.h"

namespace lisadiff::io {
namespace {

constexpr int kMaxSide = 16384;
constexpr double kPi = 3.14159265358979323846;
constexpr const char* kEllipsis = "\xE2\x80\xA6";     // U+2026
constexpr const char* kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// ---------------------------------------------------------------------------------------------
// The font: DejaVu Sans from the library's own bytes, loaded once per process
// ---------------------------------------------------------------------------------------------

struct Font {
  FT_Library library = nullptr;
  FT_Face face = nullptr;
  cairo_font_face_t* cairo_face = nullptr;
  cairo_font_options_t* options = nullptr;
};

// Loaded on first use and kept for the life of the process (cairo needs the FreeType face for
// as long as its font face exists). cairo serialises its own use of the face, so every
// thread's contexts may share it.
Font load_font() {
  const std::string_view bytes = fonts::dejavu_sans();
  Font font;
  if (const FT_Error e = FT_Init_FreeType(&font.library)) {
    throw Error("cannot initialise FreeType (error " + std::to_string(e) + ")");
  }
  if (const FT_Error e = FT_New_Memory_Face(font.library, reinterpret_cast<const FT_Byte*>(bytes.data()),
                                            static_cast<FT_Long>(bytes.size()), 0, &font.face)) {
    FT_Done_FreeType(font.library);
    throw Error("the built-in font DejaVu Sans (" + std::to_string(bytes.size()) +
                " bytes) cannot be loaded by FreeType (error " + std::to_string(e) + ")");
  }
  font.cairo_face = cairo_ft_font_face_create_for_ft_face(font.face, 0);
  if (const cairo_status_t s = cairo_font_face_status(font.cairo_face)) {
    throw Error(std::string("cairo cannot use the built-in font: ") + cairo_status_to_string(s));
  }
  // Grey-scale anti-aliasing (a PNG has no sub-pixel order) and light hinting: glyphs stay
  // sharp at small sizes without being distorted. Metrics are hinted too, so advances are
  // whole pixels and measured text lines up with drawn text.
  font.options = cairo_font_options_create();
  cairo_font_options_set_antialias(font.options, CAIRO_ANTIALIAS_GRAY);
  cairo_font_options_set_hint_style(font.options, CAIRO_HINT_STYLE_SLIGHT);
  cairo_font_options_set_hint_metrics(font.options, CAIRO_HINT_METRICS_ON);
  return font;
}

const Font& font() {
  static const Font loaded = load_font();
  return loaded;
}

void set_font(cairo_t* cr, double size) {
  const Font& f = font();
  cairo_set_font_face(cr, f.cairo_face);
  cairo_set_font_options(cr, f.options);
  cairo_set_font_size(cr, size);
}

// A context on a 1 x 1 surface for measuring text without a canvas, one per thread.
cairo_t* measuring_context() {
  struct Scratch {
    cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1);
    cairo_t* cr = cairo_create(surface);
    ~Scratch() {
      cairo_destroy(cr);
      cairo_surface_destroy(surface);
    }
  };
  thread_local Scratch scratch;
  return scratch.cr;
}

// ---------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------

// The length of the well-formed UTF-8 sequence at s[i] (1 to 4), or 0 when it is not one
// (a stray continuation byte, a truncated sequence, an overlong form, a surrogate, > U+10FFFF).
std::size_t utf8_sequence(std::string_view s, std::size_t i, char32_t* code = nullptr) {
  const auto byte = [&s](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  std::size_t n = 0;
  char32_t c = 0, min = 0;
  if (b0 < 0x80) {
    if (code) *code = b0;
    return 1;
  } else if ((b0 & 0xE0) == 0xC0) {
    n = 2, c = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, c = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, c = b0 & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    c = (c << 6) | (byte(i + k) & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  if (code) *code = c;
  return n;
}

// What cairo may be given: valid UTF-8 (cairo puts a context into an error state for good on
// invalid UTF-8), with control characters as spaces (they have no glyphs).
std::string printable_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    char32_t c = 0;
    const std::size_t n = utf8_sequence(s, i, &c);
    if (n == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    if (c < 0x20 || c == 0x7F || (c >= 0x80 && c < 0xA0)) {
      out += ' ';
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  return out;
}

// Byte offsets of the character boundaries of valid UTF-8 `s`, 0 and s.size() included.
std::vector<std::size_t> boundaries(std::string_view s) {
  std::vector<std::size_t> out{0};
  for (std::size_t i = 0; i < s.size();) {
    i += std::max<std::size_t>(1, utf8_sequence(s, i));
    out.push_back(std::min(i, s.size()));
  }
  return out;
}

// Width of already printable text.
double measure(const std::string& printable, double size) {
  if (printable.empty() || !(size > 0)) return 0;
  cairo_t* cr = measuring_context();
  set_font(cr, size);
  cairo_text_extents_t extents;
  cairo_text_extents(cr, printable.c_str(), &extents);
  return extents.x_advance;
}

std::string trim_spaces(std::string s) {
  while (!s.empty() && s.back() == ' ') s.pop_back();
  std::size_t first = 0;
  while (first < s.size() && s[first] == ' ') ++first;
  return s.substr(first);
}

// The longest prefix of `s` (at a character boundary, at least one character when
// at_least_one) whose width plus `suffix`'s fits in max_width; its length in bytes.
std::size_t fitting_prefix(const std::string& s, const std::string& suffix, double size, double max_width,
                           bool at_least_one) {
  const std::vector<std::size_t> cuts = boundaries(s);
  // Widths grow with the prefix (kerning aside), so a binary search over the boundaries.
  std::size_t lo = 0, hi = cuts.size() - 1;  // cuts[lo] fits; find the last that does
  while (lo < hi) {
    const std::size_t mid = (lo + hi + 1) / 2;
    if (measure(s.substr(0, cuts[mid]) + suffix, size) <= max_width) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  if (lo == 0 && at_least_one && cuts.size() > 1) lo = 1;
  return cuts[lo];
}

// Colour components for cairo.
void set_color(cairo_t* cr, Rgb c) { cairo_set_source_rgb(cr, c.r / 255.0, c.g / 255.0, c.b / 255.0); }

void check_view(const RgbView& image, const char* what) {
  if (!image.data || image.width < 1 || image.height < 1) {
    throw Error(std::string(what) + ": the image is empty (" + std::to_string(image.width) + " x " +
                std::to_string(image.height) + (image.data ? "" : ", no pixels") + ")");
  }
  if (image.width > kMaxSide || image.height > kMaxSide) {
    throw Error(std::string(what) + ": the image is " + std::to_string(image.width) + " x " +
                std::to_string(image.height) + ", more than " + std::to_string(kMaxSide) + " pixels on a side");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Text measurement and layout
// ---------------------------------------------------------------------------------------------

FontMetrics font_metrics(double size) {
  if (!(size > 0)) return {};
  cairo_t* cr = measuring_context();
  set_font(cr, size);
  cairo_font_extents_t font_extents;
  cairo_font_extents(cr, &font_extents);
  cairo_text_extents_t capital;
  cairo_text_extents(cr, "H", &capital);
  return {font_extents.ascent, font_extents.descent, -capital.y_bearing};
}

double text_width(std::string_view text, double size) { return measure(printable_utf8(text), size); }

std::string ellipsize(std::string_view text, double size, double max_width) {
  const std::string s = printable_utf8(text);
  if (measure(s, size) <= max_width) return s;
  if (measure(kEllipsis, size) > max_width) return "";
  return trim_spaces(s.substr(0, fitting_prefix(s, kEllipsis, size, max_width, false))) + kEllipsis;
}

std::vector<std::string> wrap_text(std::string_view text, double size, double max_width, int max_lines) {
  // One space between words, none at the ends: then every line is a substring of `s`.
  std::string s;
  for (const char c : printable_utf8(text)) {
    if (c != ' ' || (!s.empty() && s.back() != ' ')) s += c;
  }
  s = trim_spaces(s);
  std::vector<std::string> lines;
  std::size_t pos = 0;
  max_lines = std::max(max_lines, 1);
  while (pos < s.size()) {
    if (static_cast<int>(lines.size()) == max_lines - 1) {  // the last line takes the rest
      lines.push_back(ellipsize(s.substr(pos), size, max_width));
      break;
    }
    // Whole words while they fit; a first word that does not fit alone is cut.
    std::size_t end = pos;
    while (end < s.size()) {
      std::size_t next = s.find(' ', end + 1);
      if (next == std::string::npos) next = s.size();
      if (measure(s.substr(pos, next - pos), size) > max_width) break;
      end = next;
    }
    if (end == pos) {
      std::size_t word_end = s.find(' ', pos);
      if (word_end == std::string::npos) word_end = s.size();
      end = pos + fitting_prefix(s.substr(pos, word_end - pos), "", size, max_width, /*at_least_one=*/true);
    }
    lines.push_back(s.substr(pos, end - pos));
    pos = end;
    while (pos < s.size() && s[pos] == ' ') ++pos;
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

Rgb RgbImage::at(int x, int y) const {
  if (x < 0 || y < 0 || x >= width || y >= height) {
    throw Error("pixel (" + std::to_string(x) + ", " + std::to_string(y) + ") is outside the " +
                std::to_string(width) + " x " + std::to_string(height) + " image");
  }
  const std::size_t i = (static_cast<std::size_t>(y) * width + x) * 3;
  return {pixels[i], pixels[i + 1], pixels[i + 2]};
}

// ---------------------------------------------------------------------------------------------
// Canvas
// ---------------------------------------------------------------------------------------------

// The canvas is a cairo RGB24 image surface: one native-endian uint32 per pixel, 0x00RRGGBB,
// rows `stride` bytes apart.
struct Canvas::Cairo {
  cairo_surface_t* surface = nullptr;
  cairo_t* cr = nullptr;

  Cairo(int width, int height) {
    surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
    cr = cairo_create(surface);
    if (const cairo_status_t s = cairo_status(cr)) {
      cairo_destroy(cr);
      cairo_surface_destroy(surface);
      throw Error("cannot create a " + std::to_string(width) + " x " + std::to_string(height) +
                  " image: " + cairo_status_to_string(s));
    }
  }
  ~Cairo() {
    cairo_destroy(cr);
    cairo_surface_destroy(surface);
  }
  Cairo(const Cairo&) = delete;
  Cairo& operator=(const Cairo&) = delete;

  int stride() const { return cairo_image_surface_get_stride(surface); }
  // Pixel rows for reading; call flush() first.
  const std::uint8_t* data() const { return cairo_image_surface_get_data(surface); }
  std::uint8_t* data() { return cairo_image_surface_get_data(surface); }
  void flush() const { cairo_surface_flush(surface); }
};

Canvas::Canvas(int width, int height, Rgb background) : width_(width), height_(height) {
  if (width < 1 || height < 1 || width > kMaxSide || height > kMaxSide) {
    throw Error("image size " + std::to_string(width) + " x " + std::to_string(height) +
                " is out of range (each side 1 to " + std::to_string(kMaxSide) + " pixels)");
  }
  cairo_ = std::make_unique<Cairo>(width, height);
  fill(background);
}

Canvas::Canvas(RgbView image) : Canvas((check_view(image, "canvas"), image.width), image.height, Rgb{}) {
  blit(image, 0, 0);
}

Canvas::~Canvas() = default;
Canvas::Canvas(Canvas&& other) noexcept = default;
Canvas& Canvas::operator=(Canvas&& other) noexcept = default;

Canvas::Canvas(const Canvas& other) : Canvas(other.width_, other.height_, Rgb{}) {
  other.cairo_->flush();
  cairo_->flush();
  std::memcpy(cairo_->data(), other.cairo_->data(), static_cast<std::size_t>(cairo_->stride()) * height_);
  cairo_surface_mark_dirty(cairo_->surface);
}

Canvas& Canvas::operator=(const Canvas& other) {
  if (this != &other) *this = Canvas(other);
  return *this;
}

void Canvas::check(const char* what) const {
  if (const cairo_status_t s = cairo_status(cairo_->cr)) {
    throw Error(std::string("drawing ") + what + " failed: " + cairo_status_to_string(s));
  }
}

Rgb Canvas::pixel(int x, int y) const {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) {
    throw Error("pixel (" + std::to_string(x) + ", " + std::to_string(y) + ") is outside the canvas");
  }
  cairo_->flush();
  std::uint32_t v;
  std::memcpy(&v, cairo_->data() + static_cast<std::size_t>(y) * cairo_->stride() + 4 * static_cast<std::size_t>(x),
              4);
  return {static_cast<std::uint8_t>(v >> 16), static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v)};
}

std::vector<std::uint8_t> Canvas::rgb() const {
  cairo_->flush();
  std::vector<std::uint8_t> out(static_cast<std::size_t>(width_) * height_ * 3);
  std::uint8_t* o = out.data();
  for (int y = 0; y < height_; ++y) {
    const std::uint8_t* row = cairo_->data() + static_cast<std::size_t>(y) * cairo_->stride();
    for (int x = 0; x < width_; ++x) {
      std::uint32_t v;
      std::memcpy(&v, row + 4 * static_cast<std::size_t>(x), 4);
      *o++ = static_cast<std::uint8_t>(v >> 16);
      *o++ = static_cast<std::uint8_t>(v >> 8);
      *o++ = static_cast<std::uint8_t>(v);
    }
  }
  return out;
}

RgbImage Canvas::image() const { return {width_, height_, rgb()}; }

void Canvas::fill(Rgb color) { fill_rect(bounds(), color); }

void Canvas::fill_rect(const PixelRect& rect, Rgb color) {
  if (rect.width() <= 0 || rect.height() <= 0) return;
  cairo_t* cr = cairo_->cr;
  set_color(cr, color);
  cairo_rectangle(cr, rect.left, rect.top, rect.width(), rect.height());  // whole pixels: no blending
  cairo_fill(cr);
  check("a rectangle");
}

void Canvas::stroke_rect(const PixelRect& rect, Rgb color, int thickness) {
  const int t = std::max(1, std::min({thickness, (rect.width() + 1) / 2, (rect.height() + 1) / 2}));
  if (rect.width() <= 0 || rect.height() <= 0) return;
  fill_rect({rect.left, rect.top, rect.right, rect.top + t}, color);
  fill_rect({rect.left, rect.bottom - t, rect.right, rect.bottom}, color);
  fill_rect({rect.left, rect.top + t, rect.left + t, rect.bottom - t}, color);
  fill_rect({rect.right - t, rect.top + t, rect.right, rect.bottom - t}, color);
}

void Canvas::hline(int x0, int x1, int y, Rgb color, int dash) {
  if (x1 < x0) std::swap(x0, x1);
  if (dash <= 0) return fill_rect({x0, y, x1 + 1, y + 1}, color);
  for (int x = x0; x <= x1; x += 2 * dash) fill_rect({x, y, std::min(x + dash, x1 + 1), y + 1}, color);
}

void Canvas::vline(int x, int y0, int y1, Rgb color, int dash) {
  if (y1 < y0) std::swap(y0, y1);
  if (dash <= 0) return fill_rect({x, y0, x + 1, y1 + 1}, color);
  for (int y = y0; y <= y1; y += 2 * dash) fill_rect({x, y, x + 1, std::min(y + dash, y1 + 1)}, color);
}

void Canvas::polyline(const std::vector<Point>& points, Rgb color, double width, const PixelRect& clip) {
  if (points.empty() || !(width > 0) || clip.width() <= 0 || clip.height() <= 0) return;
  cairo_t* cr = cairo_->cr;
  cairo_save(cr);
  cairo_rectangle(cr, clip.left, clip.top, clip.width(), clip.height());
  cairo_clip(cr);
  set_color(cr, color);
  // Far-away coordinates (a value off the axis) are clamped: cairo's fixed-point numbers
  // hold about +-8 million.
  const auto c = [](double v) { return std::clamp(v, -1e6, 1e6); };
  if (points.size() == 1) {
    cairo_arc(cr, c(points[0].x), c(points[0].y), width / 2, 0, 2 * kPi);
    cairo_fill(cr);
  } else {
    cairo_set_line_width(cr, width);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);
    cairo_move_to(cr, c(points[0].x), c(points[0].y));
    for (std::size_t i = 1; i < points.size(); ++i) cairo_line_to(cr, c(points[i].x), c(points[i].y));
    cairo_stroke(cr);
  }
  cairo_restore(cr);
  check("a polyline");
}

void Canvas::text(double x, double y, std::string_view text, const TextStyle& style) {
  const std::string s = printable_utf8(text);
  if (s.empty() || !(style.size > 0)) return;
  cairo_t* cr = cairo_->cr;
  cairo_save(cr);
  set_font(cr, style.size);
  cairo_font_extents_t font_extents;
  cairo_font_extents(cr, &font_extents);
  cairo_text_extents_t extents;
  cairo_text_extents(cr, s.c_str(), &extents);
  double dx = 0, dy = 0;  // from the anchor to the baseline's left end, in the text's frame
  if (style.align == Align::centre) dx = -extents.x_advance / 2;
  if (style.align == Align::right) dx = -extents.x_advance;
  switch (style.valign) {
    case VAlign::top: dy = font_extents.ascent; break;
    case VAlign::middle: dy = font_metrics(style.size).cap_height / 2; break;
    case VAlign::baseline: dy = 0; break;
    case VAlign::bottom: dy = -font_extents.descent; break;
  }
  if (style.angle == 0) {
    cairo_move_to(cr, std::round(x + dx), std::round(y + dy));
  } else {
    cairo_translate(cr, x, y);
    cairo_rotate(cr, -style.angle * kPi / 180);  // y points down: negative is counter-clockwise
    cairo_move_to(cr, dx, dy);
  }
  set_color(cr, style.color);
  cairo_show_text(cr, s.c_str());
  cairo_restore(cr);
  check("text");
}

void Canvas::blit(RgbView image, int x, int y) {
  check_view(image, "blit");
  const int x0 = std::max(x, 0), x1 = std::min(x + image.width, width_);
  const int y0 = std::max(y, 0), y1 = std::min(y + image.height, height_);
  if (x0 >= x1 || y0 >= y1) return;
  cairo_->flush();
  for (int row = y0; row < y1; ++row) {
    const std::uint8_t* in = image.data + (static_cast<std::size_t>(row - y) * image.width + (x0 - x)) * 3;
    std::uint8_t* out =
        cairo_->data() + static_cast<std::size_t>(row) * cairo_->stride() + 4 * static_cast<std::size_t>(x0);
    for (int col = x0; col < x1; ++col, in += 3, out += 4) {
      const std::uint32_t v = (std::uint32_t{in[0]} << 16) | (std::uint32_t{in[1]} << 8) | in[2];
      std::memcpy(out, &v, 4);
    }
  }
  cairo_surface_mark_dirty(cairo_->surface);
}

void Canvas::blit_scaled(RgbView image, const PixelRect& dest) {
  check_view(image, "blit");
  if (dest.width() <= 0 || dest.height() <= 0) {
    throw Error("blit: the destination " + std::to_string(dest.width()) + " x " + std::to_string(dest.height()) +
                " is empty");
  }
  const Canvas source(image);
  source.cairo_->flush();
  cairo_t* cr = cairo_->cr;
  cairo_save(cr);
  cairo_rectangle(cr, dest.left, dest.top, dest.width(), dest.height());
  cairo_clip(cr);
  cairo_translate(cr, dest.left, dest.top);
  cairo_scale(cr, static_cast<double>(dest.width()) / image.width, static_cast<double>(dest.height()) / image.height);
  cairo_set_source_surface(cr, source.cairo_->surface, 0, 0);
  cairo_pattern_t* pattern = cairo_get_source(cr);
  cairo_pattern_set_filter(pattern, CAIRO_FILTER_GOOD);
  cairo_pattern_set_extend(pattern, CAIRO_EXTEND_PAD);  // edge pixels, not black, beyond the border
  cairo_paint(cr);
  cairo_restore(cr);
  check("a scaled image");
}

std::string Canvas::encode_png() const {
  cairo_->flush();
  std::string png;
  const auto append = [](void* closure, const unsigned char* data, unsigned int length) {
    static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
    return CAIRO_STATUS_SUCCESS;
  };
  if (const cairo_status_t s = cairo_surface_write_to_png_stream(cairo_->surface, append, &png)) {
    throw Error(std::string("PNG encoding failed: ") + cairo_status_to_string(s));
  }
  return png;
}

void Canvas::write_png(const std::filesystem::path& path) const { write_file_atomic(path, encode_png()); }

std::string encode_png(RgbView image) { return Canvas(image).encode_png(); }

void write_png(RgbView image, const std::filesystem::path& path) { Canvas(image).write_png(path); }

}  // namespace lisadiff::io
