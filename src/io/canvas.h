// An RGB canvas for figures and image grids (`lisadiff plot`, captioned sample grids), drawn
// by cairo: filled and outlined rectangles, crisp one-pixel rules, anti-aliased polylines,
// text in DejaVu Sans (compiled into the library, io/fonts.h) with alignment and rotation,
// and RGB images copied in pixel for pixel or resampled. Written as 8-bit RGB PNG, atomically.
//
// Coordinates are pixels with (0, 0) the top-left corner; pixel (x, y) covers the square
// [x, x + 1) x [y, y + 1), so its centre is (x + 0.5, y + 0.5). Drawing outside the canvas
// (or outside a clip rectangle) is silently cut off. Text is UTF-8: invalid bytes draw as
// U+FFFD, control characters as spaces, characters the font lacks as empty boxes.
//
// A canvas is not thread-safe; separate canvases may be drawn from separate threads. Rendering
// is deterministic: the same calls give the same pixels (with the same cairo and FreeType).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lisadiff::io {

struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
  friend bool operator==(const Rgb& a, const Rgb& b) { return a.r == b.r && a.g == b.g && a.b == b.b; }
  friend bool operator!=(const Rgb& a, const Rgb& b) { return !(a == b); }
};

// Half-open pixel rectangle [left, right) x [top, bottom).
struct PixelRect {
  int left = 0, top = 0, right = 0, bottom = 0;
  int width() const { return right - left; }
  int height() const { return bottom - top; }
  bool contains(int x, int y) const { return x >= left && x < right && y >= top && y < bottom; }
};

struct Point {
  double x = 0, y = 0;
};

// A read-only RGB image someone else owns: row-major, 3 bytes per pixel, no padding (the
// layout of a contiguous uint8 [H, W, 3] tensor).
struct RgbView {
  const std::uint8_t* data = nullptr;
  int width = 0, height = 0;
};

// An RGB image that owns its pixels, in RgbView's layout.
struct RgbImage {
  int width = 0, height = 0;
  std::vector<std::uint8_t> pixels;  // height * width * 3

  RgbView view() const { return {pixels.data(), width, height}; }
  operator RgbView() const { return view(); }  // NOLINT: an image is usable wherever a view is
  Rgb at(int x, int y) const;                   // throws lisadiff::Error outside the image
};

// Text placement: the anchor (x, y) given to Canvas::text is the left end, the middle or the
// right end of the text's advance, and its line's top, the middle of its capitals (digits
// have their height, so `middle` centres a tick label on its tick), its baseline, or its
// line's bottom.
enum class Align { left, centre, right };
enum class VAlign { top, middle, baseline, bottom };

struct TextStyle {
  double size = 12;  // pixels per em; capitals are 0.73 em high, a line is 1.17 em
  Rgb color{};
  Align align = Align::left;
  VAlign valign = VAlign::top;
  double angle = 0;  // degrees, counter-clockwise about the anchor: 90 reads bottom to top
};

// The font's vertical metrics at `size` pixels per em.
struct FontMetrics {
  double ascent = 0;      // baseline to the top of the line
  double descent = 0;     // baseline to the bottom of the line (positive)
  double cap_height = 0;  // baseline to the top of capitals and digits
  double line_height() const { return ascent + descent; }
};
FontMetrics font_metrics(double size);

// The advance width, in pixels, of `text` drawn at `size` (what Canvas::text takes up along
// its baseline; the ink may reach a pixel or so beyond it).
double text_width(std::string_view text, double size);

// `text` if it fits in max_width pixels at `size`, else its longest prefix (whole characters,
// trailing spaces dropped) followed by "…" that does; "" when not even "…" fits.
std::string ellipsize(std::string_view text, double size, double max_width);

// `text` broken into lines no wider than max_width at `size`: at spaces where it can (runs of
// white space count as one), inside a word that is wider than a line on its own. At most
// max_lines (>= 1) lines; when the text needs more, the last one ends with "…".
std::vector<std::string> wrap_text(std::string_view text, double size, double max_width, int max_lines);

class Canvas {
 public:
  // width and height in pixels, each 1 to 16384; throws lisadiff::Error otherwise.
  Canvas(int width, int height, Rgb background);
  // A canvas holding a copy of `image`.
  explicit Canvas(RgbView image);
  ~Canvas();
  Canvas(const Canvas& other);
  Canvas& operator=(const Canvas& other);
  Canvas(Canvas&& other) noexcept;
  Canvas& operator=(Canvas&& other) noexcept;

  int width() const { return width_; }
  int height() const { return height_; }
  PixelRect bounds() const { return {0, 0, width_, height_}; }
  Rgb pixel(int x, int y) const;  // throws lisadiff::Error outside the canvas
  // The pixels, row-major RGB, 3 bytes per pixel, no padding.
  std::vector<std::uint8_t> rgb() const;
  RgbImage image() const;

  void fill(Rgb color);
  void fill_rect(const PixelRect& rect, Rgb color);
  // The outline of `rect`, `thickness` whole pixels drawn inside it.
  void stroke_rect(const PixelRect& rect, Rgb color, int thickness = 1);
  // One-pixel rules along pixel rows / columns, ends inclusive, not anti-aliased (grids,
  // frames, ticks); dash > 0 draws dash pixels on, dash pixels off.
  void hline(int x0, int x1, int y, Rgb color, int dash = 0);
  void vline(int x, int y0, int y1, Rgb color, int dash = 0);
  // An anti-aliased polyline of the given stroke width (pixels) with round joins and caps,
  // clipped to `clip`. The stroke is one shape, so joints are not darker than the rest of
  // the line. A single point draws a dot of diameter `width`.
  void polyline(const std::vector<Point>& points, Rgb color, double width, const PixelRect& clip);

  // One line of text anchored at (x, y) as style says (see Align and VAlign). Unrotated text
  // has its baseline and left end snapped to whole pixels, so it looks the same wherever it is.
  void text(double x, double y, std::string_view text, const TextStyle& style);

  // `image` with its top-left pixel at (x, y), pixel for pixel; the part outside the canvas
  // is cut off. Throws lisadiff::Error for an empty view.
  void blit(RgbView image, int x, int y);
  // `image` resampled to fill `dest` (bilinear when enlarging, box-filtered when shrinking),
  // clipped to the canvas. Throws lisadiff::Error for an empty view or destination.
  void blit_scaled(RgbView image, const PixelRect& dest);

  // The canvas as PNG bytes (8-bit RGB, deterministic). Throws lisadiff::Error if cairo fails.
  std::string encode_png() const;
  // encode_png, written atomically (temporary file + rename) to `path`.
  void write_png(const std::filesystem::path& path) const;

 private:
  struct Cairo;  // the cairo surface and context
  void check(const char* what) const;

  int width_ = 0;
  int height_ = 0;
  std::unique_ptr<Cairo> cairo_;
};

// `image` as PNG bytes, and written atomically to `path`.
std::string encode_png(RgbView image);
void write_png(RgbView image, const std::filesystem::path& path);

}  // namespace lisadiff::io
