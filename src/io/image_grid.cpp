#include "io/image_grid.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "core/error.h"

namespace lisadiff::io {
namespace {

constexpr int kMaxSide = 16384;  // Canvas's limit
constexpr double kHeaderScale = 1.2;

int line_height(double font_size) { return static_cast<int>(std::ceil(font_metrics(font_size).line_height())); }

}  // namespace

GridLayout grid_layout(int count, int tile_width, int tile_height, int columns, bool captioned,
                       const GridOptions& options) {
  if (count < 1) throw Error("captioned grid: no images");
  if (tile_width < 1 || tile_height < 1) {
    throw Error(fmt::format("captioned grid: the tiles are {} x {} pixels", tile_width, tile_height));
  }
  if (columns < 1) throw Error(fmt::format("captioned grid: {} columns (at least 1)", columns));
  if (options.caption_lines < 1 || options.caption_lines > 10) {
    throw Error(fmt::format("captioned grid: {} caption lines (1 to 10)", options.caption_lines));
  }
  if (!(options.font_size >= 0 && options.font_size <= 500)) {
    throw Error(
        fmt::format("captioned grid: font size {} (0 for automatic, else up to 500 pixels)", options.font_size));
  }
  if (options.padding < -1 || options.padding > 1000) {
    throw Error(fmt::format("captioned grid: padding {} (-1 for automatic, else 0 to 1000 pixels)", options.padding));
  }

  GridLayout g;
  g.tile_width = tile_width;
  g.tile_height = tile_height;
  g.columns = std::min(columns, count);
  g.rows = (count + g.columns - 1) / g.columns;
  g.font_size = options.font_size > 0 ? options.font_size : std::clamp(tile_width / 24.0, 10.0, 48.0);
  const int pad = options.padding >= 0 ? options.padding : std::max(4, tile_width / 32);
  // Under each tile: half a padding of air, then the caption's lines.
  const int caption_h = captioned ? pad / 2 + options.caption_lines * line_height(g.font_size) : 0;
  const int header_h = options.header.empty() ? 0 : line_height(g.font_size * kHeaderScale);
  const int header_band = options.header.empty() ? 0 : header_h + pad;

  // In 64 bits: a few thousand tiles of a few thousand pixels overflow an int.
  const std::int64_t width = pad + std::int64_t{g.columns} * (tile_width + pad);
  const std::int64_t height = pad + header_band + std::int64_t{g.rows} * (tile_height + caption_h + pad);
  if (width > kMaxSide || height > kMaxSide) {
    throw Error(fmt::format("captioned grid: {} images of {} x {} in {} columns make a {} x {} image, more than "
                            "{} pixels on a side (use more or fewer columns, or several grids)",
                            count, tile_width, tile_height, g.columns, width, height, kMaxSide));
  }
  g.width = static_cast<int>(width);
  g.height = static_cast<int>(height);
  if (!options.header.empty()) g.header = {pad, pad, g.width - pad, pad + header_h};
  for (int i = 0; i < count; ++i) {
    const int left = pad + (i % g.columns) * (tile_width + pad);
    const int top = pad + header_band + (i / g.columns) * (tile_height + caption_h + pad);
    g.tiles.push_back({left, top, left + tile_width, top + tile_height});
    g.captions.push_back({left, top + tile_height, left + tile_width, top + tile_height + caption_h});
  }
  return g;
}

RgbImage captioned_grid(const std::vector<RgbView>& images, const std::vector<std::string>& captions, int columns,
                        const GridOptions& options) {
  if (images.empty()) throw Error("captioned grid: no images");
  if (!captions.empty() && captions.size() != images.size()) {
    throw Error(fmt::format("captioned grid: {} captions for {} images (give one per image, or none)",
                            captions.size(), images.size()));
  }
  for (std::size_t i = 0; i < images.size(); ++i) {
    const RgbView& image = images[i];
    if (!image.data || image.width < 1 || image.height < 1) {
      throw Error(fmt::format("captioned grid: image {} is empty ({} x {})", i, image.width, image.height));
    }
    if (image.width != images[0].width || image.height != images[0].height) {
      throw Error(fmt::format("captioned grid: image {} is {} x {}, image 0 is {} x {}: all tiles must have one size",
                              i, image.width, image.height, images[0].width, images[0].height));
    }
  }
  const GridLayout g = grid_layout(static_cast<int>(images.size()), images[0].width, images[0].height, columns,
                                   !captions.empty(), options);
  Canvas canvas(g.width, g.height, options.background);

  if (!options.header.empty()) {
    const double size = g.font_size * kHeaderScale;
    canvas.text(g.header.left, g.header.top, ellipsize(options.header, size, g.header.width()),
                {size, options.text, Align::left, VAlign::top});
  }
  const int line_h = line_height(g.font_size);
  for (std::size_t i = 0; i < images.size(); ++i) {
    canvas.blit(images[i], g.tiles[i].left, g.tiles[i].top);
    if (captions.empty()) continue;
    const PixelRect& band = g.captions[i];
    // A pixel of margin each side: anti-aliased ink may reach just past the advance.
    const std::vector<std::string> lines = wrap_text(captions[i], g.font_size, band.width() - 2, options.caption_lines);
    int y = band.bottom - options.caption_lines * line_h;  // below the half padding of air
    for (const std::string& line : lines) {
      canvas.text(band.left + band.width() / 2.0, y, line, {g.font_size, options.text, Align::centre, VAlign::top});
      y += line_h;
    }
  }
  return canvas.image();
}

RgbView rgb_view(const torch::Tensor& t) {
  if (t.scalar_type() != torch::kUInt8 || t.dim() != 3 || t.size(2) != 3 || !t.is_contiguous() || !t.device().is_cpu()) {
    throw Error(fmt::format("an image view needs a contiguous uint8 [H, W, 3] CPU tensor, got {} {}",
                            c10::toString(t.scalar_type()), fmt::join(t.sizes(), "x")));
  }
  return {t.data_ptr<std::uint8_t>(), static_cast<int>(t.size(1)), static_cast<int>(t.size(0))};
}

void write_captioned_grid(const std::filesystem::path& path, const std::vector<RgbView>& images,
                          const std::vector<std::string>& captions, int columns, const GridOptions& options) {
  write_png(captioned_grid(images, captions, columns, options), path);
}

}  // namespace lisadiff::io
