// io/canvas.h: the built-in font, rectangles and rules, anti-aliased polylines, text (where it
// lands for each alignment, rotation, measurement, wrapping, bad UTF-8), image blits and PNG
// round trips. io/image_grid.h: captioned grids (size, tiles, captions, bad input).
#include <algorithm>
#include <cmath>

#define STBI_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

#include "io/canvas.h"
#include "io/fonts.h"
#include "io/image_grid.h"
#include "test_util.h"

namespace lisadiff::io {
namespace {

namespace fs = std::filesystem;
using lisadiff::testing::TempDir;

constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kBlack{0, 0, 0};

int ink_pixels(const Canvas& c, const PixelRect& r) {
  int n = 0;
  for (int y = std::max(r.top, 0); y < std::min(r.bottom, c.height()); ++y) {
    for (int x = std::max(r.left, 0); x < std::min(r.right, c.width()); ++x) n += c.pixel(x, y) != kWhite;
  }
  return n;
}

// The smallest rectangle holding every non-white pixel (empty when there is none).
PixelRect ink_box(const Canvas& c) {
  PixelRect box{c.width(), c.height(), 0, 0};
  for (int y = 0; y < c.height(); ++y) {
    for (int x = 0; x < c.width(); ++x) {
      if (c.pixel(x, y) == kWhite) continue;
      box.left = std::min(box.left, x), box.right = std::max(box.right, x + 1);
      box.top = std::min(box.top, y), box.bottom = std::max(box.bottom, y + 1);
    }
  }
  if (box.right <= box.left) return {};
  return box;
}

RgbImage pattern_image(int width, int height, int seed) {
  RgbImage image{width, height, std::vector<std::uint8_t>(static_cast<std::size_t>(width) * height * 3)};
  for (std::size_t i = 0; i < image.pixels.size(); ++i) {
    image.pixels[i] = static_cast<std::uint8_t>((i * 37 + seed * 101 + (i / 7) * 13) % 256);
  }
  return image;
}

// ---------------------------------------------------------------------------------------------
// Font
// ---------------------------------------------------------------------------------------------

TEST(CanvasFont, DejaVuSansIsCompiledIn) {
  const std::string_view ttf = fonts::dejavu_sans();
  ASSERT_GT(ttf.size(), 500'000u);                      // the whole font, not a subset
  EXPECT_EQ(ttf.substr(0, 4), std::string_view("\0\1\0\0", 4));  // TrueType's signature
  EXPECT_NE(ttf.find("DejaVu Sans"), std::string_view::npos);
}

TEST(CanvasFont, MetricsScaleWithTheSize) {
  const FontMetrics m12 = font_metrics(12), m48 = font_metrics(48);
  EXPECT_NEAR(m48.cap_height / 48, 0.73, 0.04);  // DejaVu Sans: capitals 1493 of 2048 units
  EXPECT_NEAR(m48.line_height() / 48, 1.16, 0.05);
  EXPECT_GT(m12.ascent, m12.cap_height);
  EXPECT_GT(m12.descent, 0);
  EXPECT_NEAR(text_width("Hello, world", 48) / text_width("Hello, world", 12), 4.0, 0.3);
  EXPECT_GT(text_width("mmmm", 12), text_width("iiii", 12));  // proportional, not monospaced
  EXPECT_EQ(text_width("", 12), 0);
}

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

TEST(CanvasShapes, SizeOutOfRangeIsAnError) {
  EXPECT_THROW_WITH(Canvas(0, 10, kWhite), "image size 0 x 10 is out of range");
  EXPECT_THROW_WITH(Canvas(10, 20000, kWhite), "image size 10 x 20000 is out of range");
  EXPECT_THROW_WITH(Canvas(4, 4, kWhite).pixel(4, 0), "pixel (4, 0) is outside the canvas");
}

TEST(CanvasShapes, RectanglesAndRulesCoverWholePixels) {
  Canvas c(20, 12, kWhite);
  EXPECT_EQ(c.rgb(), std::vector<std::uint8_t>(20 * 12 * 3, 255));
  c.fill_rect({2, 3, 6, 5}, {10, 20, 30});
  EXPECT_EQ(ink_pixels(c, c.bounds()), 4 * 2);
  EXPECT_EQ(c.pixel(2, 3), (Rgb{10, 20, 30}));
  EXPECT_EQ(c.pixel(5, 4), (Rgb{10, 20, 30}));
  EXPECT_EQ(c.pixel(6, 4), kWhite);
  EXPECT_EQ(c.rgb()[(4 * 20 + 5) * 3 + 2], 30);  // rgb(): row-major, 3 bytes a pixel

  Canvas rules(20, 12, kWhite);
  rules.hline(2, 9, 1, kBlack);               // ends inclusive: 8 pixels
  rules.vline(15, 0, 11, kBlack, /*dash=*/2);  // on 0-1, 4-5, 8-9: 6 pixels
  EXPECT_EQ(ink_pixels(rules, {0, 1, 15, 2}), 8);
  EXPECT_EQ(ink_pixels(rules, {15, 0, 16, 12}), 6);
  EXPECT_EQ(rules.pixel(15, 1), kBlack);
  EXPECT_EQ(rules.pixel(15, 2), kWhite);
  EXPECT_EQ(rules.pixel(15, 4), kBlack);

  Canvas outline(20, 12, kWhite);
  outline.stroke_rect({1, 1, 11, 9}, kBlack, 2);
  EXPECT_EQ(ink_pixels(outline, outline.bounds()), 10 * 8 - 6 * 4);
  EXPECT_EQ(outline.pixel(5, 5), kWhite);
  EXPECT_EQ(outline.pixel(2, 5), kBlack);

  c.fill(kBlack);
  EXPECT_EQ(ink_pixels(c, c.bounds()), 20 * 12);
}

TEST(CanvasShapes, PolylineIsAntiAliasedAndClipped) {
  Canvas canvas(100, 100, kWhite);
  canvas.polyline({{10.5, 10.5}, {90.5, 40.5}}, kBlack, 1.5, canvas.bounds());
  // Full coverage on the line, partial next to it, nothing far away.
  EXPECT_EQ(canvas.pixel(50, 25), kBlack);  // its centre (50.5, 25.5) is on the line
  int partial = 0;
  for (int x = 10; x < 90; ++x) {
    for (int y = 0; y < 100; ++y) {
      const Rgb p = canvas.pixel(x, y);
      partial += p.r > 0 && p.r < 255;
    }
  }
  EXPECT_GT(partial, 80);
  EXPECT_EQ(canvas.pixel(50, 60), kWhite);

  Canvas clipped(100, 100, kWhite);
  const PixelRect left_half{0, 0, 50, 100};
  clipped.polyline({{0, 50}, {99, 50}}, kBlack, 2, left_half);
  EXPECT_GT(ink_pixels(clipped, left_half), 0);
  EXPECT_EQ(ink_pixels(clipped, {50, 0, 100, 100}), 0);

  // A single point is a round dot; an off-canvas point draws nothing and breaks nothing.
  Canvas dot(20, 20, kWhite);
  dot.polyline({{10, 10}}, kBlack, 6, dot.bounds());
  EXPECT_EQ(dot.pixel(9, 9), kBlack);
  EXPECT_EQ(ink_box(dot).width(), 6);
  dot.polyline({{1e12, -1e12}, {2e12, 5}}, kBlack, 2, dot.bounds());
  EXPECT_EQ(ink_box(dot).width(), 6);
}

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

TEST(CanvasText, TextDrawsWithinItsMeasuredBox) {
  Canvas canvas(200, 60, kWhite);
  const std::string label = "1e-4 lr";
  const double size = 20;
  canvas.text(30, 10, label, {size, kBlack});
  const PixelRect ink = ink_box(canvas);
  const FontMetrics m = font_metrics(size);
  // Horizontally within the advance (a pixel of anti-aliasing either side); vertically within
  // the line, digits reaching up to the capitals' height above the baseline.
  EXPECT_GE(ink.left, 30 - 1);
  EXPECT_LE(ink.right, 30 + text_width(label, size) + 1);
  EXPECT_GT(ink.width(), text_width(label, size) * 0.8);
  const double baseline = 10 + m.ascent;
  EXPECT_NEAR(ink.top, baseline - m.cap_height, 1.5);
  EXPECT_LE(ink.bottom, 10 + m.line_height() + 1);
  EXPECT_GT(ink_pixels(canvas, ink), 60);

  // Glyphs differ from one another, are anti-aliased, and a larger size draws more ink.
  Canvas one(80, 80, kWhite), seven(80, 80, kWhite), big(80, 80, kWhite);
  one.text(5, 5, "1", {16, kBlack});
  seven.text(5, 5, "7", {16, kBlack});
  big.text(5, 5, "1", {32, kBlack});
  EXPECT_NE(one.rgb(), seven.rgb());
  EXPECT_GT(ink_pixels(big, big.bounds()), 2 * ink_pixels(one, one.bounds()));
  int grey = 0;
  for (int y = 0; y < 80; ++y) {
    for (int x = 0; x < 80; ++x) grey += seven.pixel(x, y).r > 0 && seven.pixel(x, y).r < 255;
  }
  EXPECT_GT(grey, 3);
}

TEST(CanvasText, AlignmentPlacesTheAnchor) {
  const double size = 18;
  const std::string label = "loss 0.183";
  const double w = text_width(label, size);
  const auto box = [&](Align align, VAlign valign) {
    Canvas c(300, 100, kWhite);
    c.text(150, 50, label, {size, kBlack, align, valign});
    return ink_box(c);
  };
  const PixelRect left = box(Align::left, VAlign::baseline);
  const PixelRect centre = box(Align::centre, VAlign::baseline);
  const PixelRect right = box(Align::right, VAlign::baseline);
  EXPECT_NEAR(left.left, 150, 2);
  EXPECT_NEAR(right.right, 150, 2);
  EXPECT_NEAR((centre.left + centre.right) / 2.0, 150, 2);
  EXPECT_NEAR(left.left - right.left, w, 1);
  // Baseline: no ink below the baseline in "loss 0.183" (no descenders).
  EXPECT_LE(left.bottom, 51);
  EXPECT_GE(left.bottom, 49);
  // Middle: the digits' and capitals' middle on the anchor.
  const PixelRect middle = box(Align::left, VAlign::middle);
  EXPECT_NEAR((middle.top + middle.bottom) / 2.0, 50, 1.5);
  // Top and bottom: the line's box starts (ends) at the anchor.
  const FontMetrics m = font_metrics(size);
  EXPECT_NEAR(box(Align::left, VAlign::top).bottom, 50 + m.ascent, 1.5);
  EXPECT_NEAR(box(Align::left, VAlign::bottom).bottom, 50 - m.descent, 1.5);
}

TEST(CanvasText, RotatedTextRunsUpwards) {
  Canvas c(100, 200, kWhite);
  const std::string label = "grad_norm (log)";
  c.text(50, 100, label, {16, kBlack, Align::centre, VAlign::middle, 90});
  const PixelRect ink = ink_box(c);
  EXPECT_GT(ink.height(), 3 * ink.width());  // a column, not a row
  EXPECT_NEAR(ink.height(), text_width(label, 16), 4);
  EXPECT_NEAR((ink.top + ink.bottom) / 2.0, 100, 3);
  EXPECT_NEAR((ink.left + ink.right) / 2.0, 50, 3);
  // Turned counter-clockwise, text runs upwards from its anchor and a descender points right.
  Canvas start(100, 200, kWhite);
  start.text(50, 100, "g", {16, kBlack, Align::left, VAlign::baseline, 90});
  EXPECT_LT(ink_box(start).bottom, 101);  // drawn upwards from the anchor
  EXPECT_GT(ink_box(start).right, 52);  // the descender, to the right of the baseline
  EXPECT_LT(ink_box(start).left, 45);   // the body, to its left
}

TEST(CanvasText, BadUtf8AndControlCharactersDoNotBreakTheCanvas) {
  Canvas c(200, 40, kWhite);
  c.text(5, 5, std::string("caf\xC3\xA9 \xFF\xFE bad\ttab\n\xE2\x82", 14), {14, kBlack});
  EXPECT_GT(ink_pixels(c, c.bounds()), 20);
  c.fill_rect({190, 30, 200, 40}, kBlack);  // the canvas still draws afterwards
  EXPECT_EQ(c.pixel(195, 35), kBlack);
  EXPECT_GT(text_width("\xFF", 14), 0);  // U+FFFD has a width
  EXPECT_EQ(text_width("a\tb", 14), text_width("a b", 14));
}

TEST(CanvasText, EllipsizeAndWrapFitTheWidth) {
  const double size = 14;
  EXPECT_EQ(ellipsize("short", size, 200), "short");
  const std::string long_text = "a photograph of a red circle on a blue background, high detail";
  const std::string cut = ellipsize(long_text, size, 120);
  EXPECT_LE(text_width(cut, size), 120);
  EXPECT_GT(text_width(cut, size), 80);
  EXPECT_EQ(cut.substr(cut.size() - 3), "\xE2\x80\xA6");
  EXPECT_EQ(long_text.find(cut.substr(0, cut.size() - 3)), 0u);
  EXPECT_EQ(ellipsize(long_text, size, 2), "");  // not even the ellipsis fits
  // Multi-byte characters are never cut in half.
  const std::string accents = "\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9";
  const std::string cut_accents = ellipsize(accents, size, 40);
  EXPECT_EQ((cut_accents.size() - 3) % 2, 0u);
  EXPECT_EQ(cut_accents.substr(0, 2), "\xC3\xA9");

  const auto lines = wrap_text(long_text, size, 150, 10);
  ASSERT_GE(lines.size(), 3u);
  std::string joined;
  for (const auto& line : lines) {
    EXPECT_LE(text_width(line, size), 150) << line;
    EXPECT_NE(line.front(), ' ');
    EXPECT_NE(line.back(), ' ');
    joined += (joined.empty() ? "" : " ") + line;
  }
  EXPECT_EQ(joined, long_text);  // broken at spaces only, nothing lost

  const auto two = wrap_text(long_text, size, 150, 2);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0], lines[0]);
  EXPECT_EQ(two[1].substr(two[1].size() - 3), "\xE2\x80\xA6");
  EXPECT_LE(text_width(two[1], size), 150);

  // A word longer than a line is cut inside; white space runs collapse; nothing gives no lines.
  const auto word = wrap_text("Pneumonoultramicroscopicsilicovolcanoconiosis", size, 60, 5);
  ASSERT_GE(word.size(), 3u);
  for (const auto& line : word) EXPECT_LE(text_width(line, size), 60) << line;
  EXPECT_EQ(wrap_text("  a \n\n  b  ", size, 100, 3), (std::vector<std::string>{"a b"}));
  EXPECT_TRUE(wrap_text("   ", size, 100, 3).empty());
}

// ---------------------------------------------------------------------------------------------
// Images and PNG
// ---------------------------------------------------------------------------------------------

TEST(CanvasImages, BlitCopiesPixelsExactlyAndClips) {
  const RgbImage tile = pattern_image(7, 5, 1);
  Canvas c(20, 10, kWhite);
  c.blit(tile, 3, 2);
  for (int y = 0; y < 5; ++y) {
    for (int x = 0; x < 7; ++x) ASSERT_EQ(c.pixel(3 + x, 2 + y), tile.at(x, y)) << x << ", " << y;
  }
  EXPECT_EQ(c.pixel(2, 2), kWhite);
  EXPECT_EQ(c.pixel(10, 2), kWhite);
  c.blit(tile, -4, 7);  // partly outside: the visible part lands, nothing else changes
  EXPECT_EQ(c.pixel(0, 7), tile.at(4, 0));
  EXPECT_EQ(c.pixel(2, 9), tile.at(6, 2));
  EXPECT_EQ(c.image().at(2, 9), tile.at(6, 2));
  EXPECT_THROW_WITH(c.blit(RgbView{}, 0, 0), "blit: the image is empty");

  // A canvas made from an image holds exactly that image.
  EXPECT_EQ(Canvas(tile).rgb(), tile.pixels);
  EXPECT_EQ(Canvas(tile).image().width, 7);
}

TEST(CanvasImages, ScaledBlitFillsTheDestination) {
  // A 2 x 2 image of four colours, enlarged to 40 x 40: each quadrant's middle has its colour.
  const RgbImage quad{2, 2, {255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 0}};
  Canvas c(60, 60, kWhite);
  c.blit_scaled(quad, {10, 10, 50, 50});
  EXPECT_EQ(c.pixel(15, 15), (Rgb{255, 0, 0}));
  EXPECT_EQ(c.pixel(44, 15), (Rgb{0, 255, 0}));
  EXPECT_EQ(c.pixel(15, 44), (Rgb{0, 0, 255}));
  EXPECT_EQ(c.pixel(44, 44), (Rgb{250, 250, 0}));
  EXPECT_EQ(c.pixel(9, 30), kWhite);   // nothing outside the destination
  EXPECT_EQ(c.pixel(50, 30), kWhite);
  EXPECT_EQ(c.pixel(10, 49), (Rgb{0, 0, 255}));  // edges padded with the image's own pixels

  // Shrunk 4x, a fine checkerboard averages to grey.
  RgbImage checker{40, 40, std::vector<std::uint8_t>(40 * 40 * 3)};
  for (int y = 0; y < 40; ++y) {
    for (int x = 0; x < 40; ++x) {
      for (int k = 0; k < 3; ++k) checker.pixels[(y * 40 + x) * 3 + k] = (x + y) % 2 ? 255 : 0;
    }
  }
  Canvas small(10, 10, kWhite);
  small.blit_scaled(checker, small.bounds());
  EXPECT_NEAR(small.pixel(5, 5).r, 128, 20);
  EXPECT_THROW_WITH(small.blit_scaled(checker, {3, 3, 3, 8}), "destination 0 x 5 is empty");
}

TEST(CanvasImages, PngRoundTripIsExactAndAtomic) {
  TempDir dir;
  Canvas c(33, 17, {12, 34, 56});
  c.blit(pattern_image(20, 10, 3), 5, 4);
  c.text(1, 1, "Ab", {10, kWhite});
  c.write_png(dir / "canvas.png");
  const std::string bytes = lisadiff::testing::read_file(dir / "canvas.png");
  EXPECT_EQ(bytes, c.encode_png());  // deterministic
  int w = 0, h = 0, channels = 0;
  unsigned char* data = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                                              static_cast<int>(bytes.size()), &w, &h, &channels, 3);
  ASSERT_NE(data, nullptr);
  EXPECT_EQ(w, 33);
  EXPECT_EQ(h, 17);
  EXPECT_EQ(channels, 3);  // RGB, no alpha
  EXPECT_EQ(std::vector<std::uint8_t>(data, data + 33 * 17 * 3), c.rgb());
  stbi_image_free(data);
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(entry.path().filename(), "canvas.png");  // no temporary left behind
  }
  // The free functions encode a plain image the same way.
  const RgbImage image = c.image();
  EXPECT_EQ(encode_png(image), bytes);
  EXPECT_THROW_WITH(write_png(image, dir / "missing-dir" / "x.png"), "missing-dir");
}

TEST(CanvasImages, CopiesAreIndependent) {
  Canvas a(10, 10, kWhite);
  a.fill_rect({0, 0, 5, 5}, kBlack);
  Canvas b = a;
  b.fill_rect({5, 5, 10, 10}, kBlack);
  EXPECT_EQ(ink_pixels(a, a.bounds()), 25);
  EXPECT_EQ(ink_pixels(b, b.bounds()), 50);
  Canvas moved = std::move(b);
  EXPECT_EQ(ink_pixels(moved, moved.bounds()), 50);
}


// ---------------------------------------------------------------------------------------------
// Captioned grids
// ---------------------------------------------------------------------------------------------

std::vector<RgbImage> tiles(int n, int width, int height) {
  std::vector<RgbImage> out;
  for (int i = 0; i < n; ++i) out.push_back(pattern_image(width, height, i));
  return out;
}

std::vector<RgbView> views(const std::vector<RgbImage>& images) {
  return std::vector<RgbView>(images.begin(), images.end());
}

int non_background(const RgbImage& image, const PixelRect& r, Rgb background = kWhite) {
  int n = 0;
  for (int y = r.top; y < r.bottom; ++y) {
    for (int x = r.left; x < r.right; ++x) n += image.at(x, y) != background;
  }
  return n;
}

TEST(CaptionedGrid, SizeFollowsImagesAndColumns) {
  GridOptions options;
  options.padding = 6;
  // 5 images of 64 x 48 in 3 columns: 2 rows; width = 6 + 3 * (64 + 6).
  const GridLayout g = grid_layout(5, 64, 48, 3, /*captioned=*/true, options);
  EXPECT_EQ(g.columns, 3);
  EXPECT_EQ(g.rows, 2);
  EXPECT_EQ(g.width, 6 + 3 * (64 + 6));
  const int caption_h = g.captions[0].height();
  EXPECT_GE(caption_h, 2 * font_metrics(g.font_size).line_height());  // two lines by default
  EXPECT_EQ(g.height, 6 + 2 * (48 + caption_h + 6));
  EXPECT_EQ(g.tiles[4].left, 6 + 64 + 6);  // second row, second column
  EXPECT_EQ(g.tiles[4].top, 6 + 48 + caption_h + 6);

  const auto images = tiles(5, 64, 48);
  const RgbImage grid = captioned_grid(views(images), {"a", "b", "c", "d", "e"}, 3, options);
  EXPECT_EQ(grid.width, g.width);
  EXPECT_EQ(grid.height, g.height);
  EXPECT_EQ(grid.pixels.size(), static_cast<std::size_t>(g.width) * g.height * 3);

  // One row when there are fewer images than columns; one column; no caption band.
  EXPECT_EQ(grid_layout(2, 64, 48, 8, true, options).columns, 2);
  EXPECT_EQ(grid_layout(2, 64, 48, 8, true, options).width, 6 + 2 * (64 + 6));
  EXPECT_EQ(grid_layout(3, 64, 48, 1, true, options).rows, 3);
  const GridLayout bare = grid_layout(4, 64, 48, 2, /*captioned=*/false, options);
  EXPECT_EQ(bare.height, 6 + 2 * (48 + 6));
  EXPECT_EQ(captioned_grid(views(tiles(4, 64, 48)), {}, 2, options).height, bare.height);

  // A header adds a band on top and moves every tile down.
  options.header = "step 500 | seed 0 | guidance 7.5";
  const GridLayout headed = grid_layout(5, 64, 48, 3, true, options);
  EXPECT_GT(headed.header.height(), 0);
  EXPECT_EQ(headed.height - g.height, headed.tiles[0].top - g.tiles[0].top);
  EXPECT_GE(headed.tiles[0].top, headed.header.bottom);
}

TEST(CaptionedGrid, TilesAreCopiedExactlyIntoTheirCells) {
  const auto images = tiles(7, 40, 30);
  GridOptions options;
  options.header = "validation, step 1200";
  const RgbImage grid = captioned_grid(views(images), {"one", "two", "three", "four", "five", "six", "seven"}, 3,
                                       options);
  const GridLayout g = grid_layout(7, 40, 30, 3, true, options);
  for (std::size_t i = 0; i < images.size(); ++i) {
    const PixelRect& cell = g.tiles[i];
    for (int y = 0; y < 30; ++y) {
      for (int x = 0; x < 40; ++x) {
        ASSERT_EQ(grid.at(cell.left + x, cell.top + y), images[i].at(x, y))
            << "image " << i << " at " << x << ", " << y;
      }
    }
  }
  // Between and around the cells: background (the last row has two empty cells).
  EXPECT_EQ(grid.at(g.tiles[0].right, g.tiles[0].top + 5), kWhite);
  EXPECT_EQ(grid.at(g.width - 1, g.height - 1), kWhite);
  EXPECT_EQ(non_background(grid, {g.tiles[6].right + 1, g.tiles[6].top, g.width, g.height}), 0);
}

TEST(CaptionedGrid, CaptionsAreDrawnUnderEachTile) {
  const auto images = tiles(4, 96, 64);
  const std::vector<std::string> captions = {
      "a red circle", "",
      "a very long prompt that cannot possibly fit on two lines of a tile this narrow, so it is cut", "x"};
  GridOptions options;
  options.header = "lisadiff generate";
  const RgbImage grid = captioned_grid(views(images), captions, 2, options);
  const GridLayout g = grid_layout(4, 96, 64, 2, true, options);
  EXPECT_GT(non_background(grid, g.captions[0]), 20);
  EXPECT_EQ(non_background(grid, g.captions[1]), 0);  // an empty caption leaves its band blank
  EXPECT_GT(non_background(grid, g.captions[2]), non_background(grid, g.captions[0]));
  EXPECT_GT(non_background(grid, g.captions[3]), 3);
  EXPECT_GT(non_background(grid, g.header), 20);
  // Captions stay in their band: nothing drawn in the padding between the two columns.
  EXPECT_EQ(non_background(grid, {g.captions[0].right, g.captions[0].top, g.captions[1].left, g.captions[0].bottom}),
            0);
  // A short caption is centred under its tile.
  int left = g.captions[3].right, right = g.captions[3].left;
  for (int y = g.captions[3].top; y < g.captions[3].bottom; ++y) {
    for (int x = g.captions[3].left; x < g.captions[3].right; ++x) {
      if (grid.at(x, y) != kWhite) left = std::min(left, x), right = std::max(right, x + 1);
    }
  }
  EXPECT_NEAR((left + right) / 2.0, (g.captions[3].left + g.captions[3].right) / 2.0, 2);
  // Text size follows the tile: larger tiles, larger text.
  EXPECT_GT(grid_layout(1, 512, 512, 1, true).font_size, grid_layout(1, 256, 256, 1, true).font_size);
  EXPECT_NEAR(grid_layout(1, 512, 512, 1, true).font_size, 512 / 24.0, 1e-9);
}

TEST(CaptionedGrid, BadInputIsAnError) {
  const auto images = tiles(3, 32, 32);
  EXPECT_THROW_WITH(captioned_grid({}, {}, 2), "captioned grid: no images");
  std::vector<RgbImage> mixed = tiles(2, 32, 32);
  mixed.push_back(pattern_image(32, 31, 9));
  EXPECT_THROW_WITH(captioned_grid(views(mixed), {}, 2), "image 2 is 32 x 31, image 0 is 32 x 32");
  EXPECT_THROW_WITH(captioned_grid(views(images), {"a", "b"}, 2), "2 captions for 3 images");
  EXPECT_THROW_WITH(captioned_grid(views(images), {}, 0), "0 columns");
  EXPECT_THROW_WITH(captioned_grid({RgbView{nullptr, 4, 4}}, {}, 1), "image 0 is empty");
  GridOptions options;
  options.caption_lines = 0;
  EXPECT_THROW_WITH(captioned_grid(views(images), {}, 2, options), "0 caption lines");
  EXPECT_THROW_WITH(grid_layout(200, 1024, 1024, 200, true), "more than 16384 pixels on a side");
}

TEST(CaptionedGrid, WritesAPng) {
  TempDir dir;
  const auto images = tiles(2, 16, 16);
  write_captioned_grid(dir / "grid.png", views(images), {"a", "b"}, 2);
  const std::string bytes = lisadiff::testing::read_file(dir / "grid.png");
  int w = 0, h = 0, channels = 0;
  unsigned char* data = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                                              static_cast<int>(bytes.size()), &w, &h, &channels, 3);
  ASSERT_NE(data, nullptr);
  const RgbImage grid = captioned_grid(views(images), {"a", "b"}, 2);
  EXPECT_EQ(w, grid.width);
  EXPECT_EQ(h, grid.height);
  EXPECT_EQ(std::vector<std::uint8_t>(data, data + w * h * 3), grid.pixels);
  stbi_image_free(data);
}

}  // namespace
}  // namespace lisadiff::io
