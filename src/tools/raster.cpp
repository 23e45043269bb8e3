#include "tools/raster.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "data/image.h"
#include "io/atomic_file.h"

namespace lisadiff::tools {
namespace {

// Printable ASCII (32 ' ' to 126 '~') in 5 x 8 cells, drawn for lisadiff (public domain).
// One uint64 per glyph: row 0 (top) in the most significant byte, row 7 (descenders) in the
// least; in each row bit 4 is the leftmost column and bit 0 the rightmost.
constexpr std::uint64_t kFont5x8[95] = {
    0x0000000000000000, 0x0404040404000400, 0x0A0A0A0000000000, 0x0A0A1F0A1F0A0A00,  // sp ! " #
    0x040F140E051E0400, 0x1819020408130300, 0x0C12140815120D00, 0x0404080000000000,  // $ % & '
    0x0204080808040200, 0x0804020202040800, 0x0004150E15040000, 0x0004041F04040000,  // ( ) * +
    0x00000000000C0408, 0x0000001F00000000, 0x00000000000C0C00, 0x0001020408100000,  // , - . /
    0x0E11131519110E00, 0x040C040404040E00, 0x0E11010204081F00, 0x1F02040201110E00,  // 0 1 2 3
    0x02060A121F020200, 0x1F101E0101110E00, 0x0608101E11110E00, 0x1F01020408080800,  // 4 5 6 7
    0x0E11110E11110E00, 0x0E11110F01020C00, 0x000C0C000C0C0000, 0x000C0C000C040800,  // 8 9 : ;
    0x0204081008040200, 0x00001F001F000000, 0x0804020102040800, 0x0E11010204000400,  // < = > ?
    0x0E11010D15150E00, 0x0E11111F11111100, 0x1E11111E11111E00, 0x0E11101010110E00,  // @ A B C
    0x1C12111111121C00, 0x1F10101E10101F00, 0x1F10101E10101000, 0x0E11101711110F00,  // D E F G
    0x1111111F11111100, 0x0E04040404040E00, 0x0702020202120C00, 0x1112141814121100,  // H I J K
    0x1010101010101F00, 0x111B151511111100, 0x1111191513111100, 0x0E11111111110E00,  // L M N O
    0x1E11111E10101000, 0x0E11111115120D00, 0x1E11111E14121100, 0x0F10100E01011E00,  // P Q R S
    0x1F04040404040400, 0x1111111111110E00, 0x11111111110A0400, 0x1111111515150A00,  // T U V W
    0x11110A040A111100, 0x11110A0404040400, 0x1F01020408101F00, 0x0E08080808080E00,  // X Y Z [
    0x0010080402010000, 0x0E02020202020E00, 0x040A110000000000, 0x000000000000001F,  // \\ ] ^ _
    0x0804020000000000, 0x00000E010F110F00, 0x1010161911111E00, 0x00000E1010110E00,  // ` a b c
    0x01010D1311110F00, 0x00000E111F100E00, 0x0609081C08080800, 0x00000F11110F010E,  // d e f g
    0x1010161911111100, 0x04000C0404040E00, 0x020006020202120C, 0x1010121418141200,  // h i j k
    0x0C04040404040E00, 0x00001A1515111100, 0x0000161911111100, 0x00000E1111110E00,  // l m n o
    0x00001E11111E1010, 0x00000F11110F0101, 0x0000161910101000, 0x00000E100E011E00,  // p q r s
    0x08081C0808090600, 0x0000111111130D00, 0x00001111110A0400, 0x0000111115150A00,  // t u v w
    0x0000110A040A1100, 0x00001111110F010E, 0x00001F0204081F00, 0x0204040804040200,  // x y z {
    0x0404040404040400, 0x0804040204040800, 0x0000081502000000,  // | } ~
};

std::uint64_t glyph(char c) {
  const auto code = static_cast<unsigned char>(c);
  return kFont5x8[(code >= 32 && code <= 126) ? code - 32 : '?' - 32];
}

// Distance from p to the segment a-b.
double segment_distance(Point p, Point a, Point b) {
  const double dx = b.x - a.x, dy = b.y - a.y;
  const double length2 = dx * dx + dy * dy;
  double t = length2 > 0 ? ((p.x - a.x) * dx + (p.y - a.y) * dy) / length2 : 0.0;
  t = std::clamp(t, 0.0, 1.0);
  return std::hypot(p.x - (a.x + t * dx), p.y - (a.y + t * dy));
}

PixelRect intersect(const PixelRect& a, const PixelRect& b) {
  PixelRect r{std::max(a.left, b.left), std::max(a.top, b.top), std::min(a.right, b.right),
              std::min(a.bottom, b.bottom)};
  if (r.right < r.left) r.right = r.left;
  if (r.bottom < r.top) r.bottom = r.top;
  return r;
}

}  // namespace

Canvas::Canvas(int width, int height, Rgb background) : width_(width), height_(height) {
  constexpr int kMaxSide = 16384;
  if (width < 1 || height < 1 || width > kMaxSide || height > kMaxSide) {
    throw Error("image size " + std::to_string(width) + " x " + std::to_string(height) +
                " is out of range (each side 1 to " + std::to_string(kMaxSide) + " pixels)");
  }
  rgb_.resize(static_cast<std::size_t>(width) * height * 3);
  for (std::size_t i = 0; i < rgb_.size(); i += 3) {
    rgb_[i] = background.r;
    rgb_[i + 1] = background.g;
    rgb_[i + 2] = background.b;
  }
}

Rgb Canvas::pixel(int x, int y) const {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) {
    throw Error("pixel (" + std::to_string(x) + ", " + std::to_string(y) + ") is outside the canvas");
  }
  const std::size_t i = (static_cast<std::size_t>(y) * width_ + x) * 3;
  return {rgb_[i], rgb_[i + 1], rgb_[i + 2]};
}

void Canvas::blend(int x, int y, Rgb color, double alpha) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_ || !(alpha > 0)) return;
  alpha = std::min(alpha, 1.0);
  const std::size_t i = (static_cast<std::size_t>(y) * width_ + x) * 3;
  const auto mix = [alpha](std::uint8_t old_value, std::uint8_t new_value) {
    return static_cast<std::uint8_t>(std::lround(old_value + alpha * (new_value - old_value)));
  };
  rgb_[i] = mix(rgb_[i], color.r);
  rgb_[i + 1] = mix(rgb_[i + 1], color.g);
  rgb_[i + 2] = mix(rgb_[i + 2], color.b);
}

void Canvas::fill_rect(const PixelRect& rect, Rgb color) {
  const PixelRect r = intersect(rect, bounds());
  for (int y = r.top; y < r.bottom; ++y) {
    for (int x = r.left; x < r.right; ++x) blend(x, y, color, 1.0);
  }
}

void Canvas::hline(int x0, int x1, int y, Rgb color, int dash) {
  if (x1 < x0) std::swap(x0, x1);
  for (int x = x0; x <= x1; ++x) {
    if (dash <= 0 || ((x - x0) / dash) % 2 == 0) blend(x, y, color, 1.0);
  }
}

void Canvas::vline(int x, int y0, int y1, Rgb color, int dash) {
  if (y1 < y0) std::swap(y0, y1);
  for (int y = y0; y <= y1; ++y) {
    if (dash <= 0 || ((y - y0) / dash) % 2 == 0) blend(x, y, color, 1.0);
  }
}

void Canvas::polyline(const std::vector<Point>& points, Rgb color, double width, const PixelRect& clip) {
  if (points.empty() || !(width > 0)) return;
  const double reach = width / 2 + 1;
  double min_x = points[0].x, max_x = min_x, min_y = points[0].y, max_y = min_y;
  for (const Point& p : points) {
    min_x = std::min(min_x, p.x), max_x = std::max(max_x, p.x);
    min_y = std::min(min_y, p.y), max_y = std::max(max_y, p.y);
  }
  const auto floor_int = [](double v) { return static_cast<int>(std::floor(std::clamp(v, -1e6, 1e6))); };
  const PixelRect region = intersect(
      intersect(clip, bounds()),
      {floor_int(min_x - reach), floor_int(min_y - reach), floor_int(max_x + reach) + 1, floor_int(max_y + reach) + 1});
  if (region.width() <= 0 || region.height() <= 0) return;

  // Coverage of a pixel by a stroke of half-width h at distance d from its centre line,
  // approximated by a one-pixel linear ramp: 1 inside, 0 beyond h + 0.5.
  std::vector<float> coverage(static_cast<std::size_t>(region.width()) * region.height(), 0.0f);
  const double half = width / 2;
  for (std::size_t i = 0; i < points.size(); ++i) {
    const Point a = points[i];
    const Point b = points[i + 1 < points.size() ? i + 1 : i];
    const PixelRect box = intersect(region, {floor_int(std::min(a.x, b.x) - reach), floor_int(std::min(a.y, b.y) - reach),
                                             floor_int(std::max(a.x, b.x) + reach) + 1,
                                             floor_int(std::max(a.y, b.y) + reach) + 1});
    for (int y = box.top; y < box.bottom; ++y) {
      for (int x = box.left; x < box.right; ++x) {
        const double c = std::clamp(half + 0.5 - segment_distance({x + 0.5, y + 0.5}, a, b), 0.0, 1.0);
        float& cell = coverage[static_cast<std::size_t>(y - region.top) * region.width() + (x - region.left)];
        cell = std::max(cell, static_cast<float>(c));
      }
    }
  }
  for (int y = region.top; y < region.bottom; ++y) {
    for (int x = region.left; x < region.right; ++x) {
      blend(x, y, color, coverage[static_cast<std::size_t>(y - region.top) * region.width() + (x - region.left)]);
    }
  }
}

void Canvas::text(int x, int y, std::string_view text, Rgb color, int scale) {
  scale = std::max(scale, 1);
  for (const char c : text) {
    const std::uint64_t bits = glyph(c);
    for (int row = 0; row < kGlyphHeight; ++row) {
      const auto row_bits = static_cast<unsigned>((bits >> (8 * (kGlyphHeight - 1 - row))) & 0x1F);
      for (int col = 0; col < kGlyphWidth; ++col) {
        if (row_bits & (1u << (kGlyphWidth - 1 - col))) {
          fill_rect({x + col * scale, y + row * scale, x + (col + 1) * scale, y + (row + 1) * scale}, color);
        }
      }
    }
    x += kGlyphAdvance * scale;
  }
}

int text_width(std::string_view text, int scale) {
  scale = std::max(scale, 1);
  if (text.empty()) return 0;
  return static_cast<int>(text.size() - 1) * kGlyphAdvance * scale + kGlyphWidth * scale;
}

std::string encode_png(const Canvas& canvas) {
  return data::encode_png(canvas.rgb().data(), canvas.width(), canvas.height());
}

void write_png(const Canvas& canvas, const std::filesystem::path& path) {
  io::write_file_atomic(path, encode_png(canvas));
}

}  // namespace lisadiff::tools
