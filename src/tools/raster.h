// A small RGB raster for figures (lisadiff plot): filled rectangles, anti-aliased polylines,
// dashed hairlines and text in a built-in 5x8 pixel font, written as PNG with stb. No
// plotting library and no font files: everything a figure needs is here.
//
// Coordinates are pixels with (0, 0) the top-left corner; pixel (x, y) covers the square
// [x, x + 1) x [y, y + 1), so its centre is (x + 0.5, y + 0.5). Drawing outside the canvas
// (or outside a clip rectangle) is silently cut off.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace lisadiff::tools {

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

class Canvas {
 public:
  // width and height in pixels, each in [1, 16384]; throws lisadiff::Error otherwise.
  Canvas(int width, int height, Rgb background);

  int width() const { return width_; }
  int height() const { return height_; }
  PixelRect bounds() const { return {0, 0, width_, height_}; }
  Rgb pixel(int x, int y) const;
  // Row-major RGB, 3 bytes per pixel, no padding.
  const std::vector<std::uint8_t>& rgb() const { return rgb_; }

  // Mixes `color` into pixel (x, y) with weight alpha in [0, 1].
  void blend(int x, int y, Rgb color, double alpha);
  void fill_rect(const PixelRect& rect, Rgb color);
  // One-pixel lines along pixel rows / columns, ends inclusive; dash > 0 draws dash pixels
  // on, dash pixels off.
  void hline(int x0, int x1, int y, Rgb color, int dash = 0);
  void vline(int x, int y0, int y1, Rgb color, int dash = 0);
  // An anti-aliased polyline of the given stroke width (pixels), clipped to `clip`. Each
  // pixel gets the coverage of the whole stroke at once (the maximum over its segments),
  // so joints are not darker than the rest of the line. A single point draws a dot.
  void polyline(const std::vector<Point>& points, Rgb color, double width, const PixelRect& clip);

  // Text in the built-in font, top-left corner at (x, y), each font pixel a scale x scale
  // block. Characters outside printable ASCII draw as '?'.
  void text(int x, int y, std::string_view text, Rgb color, int scale = 1);

 private:
  int width_;
  int height_;
  std::vector<std::uint8_t> rgb_;
};

// The built-in font: 5 x 8 pixel cells (row 7 is for descenders), 6 pixels advance.
constexpr int kGlyphWidth = 5;
constexpr int kGlyphHeight = 8;
constexpr int kGlyphAdvance = 6;
int text_width(std::string_view text, int scale = 1);  // without the trailing gap
inline int text_height(int scale = 1) { return kGlyphHeight * scale; }

// PNG bytes of the canvas (8-bit RGB). Throws lisadiff::Error if stb fails.
std::string encode_png(const Canvas& canvas);
// encode_png, written atomically (temporary file + rename) to `path`.
void write_png(const Canvas& canvas, const std::filesystem::path& path);

}  // namespace lisadiff::tools
