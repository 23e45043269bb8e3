// Captioned image grids: equal-size RGB images tiled in rows, each with its caption (a prompt,
// a seed) under it and an optional header line above the grid (the step, the settings). What
// `lisadiff generate` and training validation write as one PNG per batch of samples.
//
//   +-------------------------------------------+
//   | header                                     |
//   | +------+  +------+  +------+  +------+     |
//   | | tile |  | tile |  | tile |  | tile |     |
//   | +------+  +------+  +------+  +------+     |
//   |  caption   caption   caption   caption     |
//   | +------+  +------+                         |
//   | ...                                        |
//
// Tiles are copied pixel for pixel. Captions are centred under their tile, wrapped at spaces
// to the tile's width, and ellipsised when they need more than caption_lines lines.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <torch/types.h>

#include "io/canvas.h"

namespace lisadiff::io {

struct GridOptions {
  std::string header;         // a line above the grid; empty: none
  int caption_lines = 2;      // lines of caption under each tile, 1 to 10
  // Text size in pixels per em; 0: the tile width / 24, from 10 to 48 (about 40 characters
  // on a caption line whatever the tile size). The header is 1.2 times larger.
  double font_size = 0;
  // Pixels around and between cells; -1: the tile width / 32, at least 4.
  int padding = -1;
  Rgb background{255, 255, 255};
  Rgb text{30, 30, 30};
};

// Where everything went, for tests and for anyone annotating the grid further.
struct GridLayout {
  int width = 0, height = 0;  // of the whole grid image
  int columns = 0, rows = 0;
  int tile_width = 0, tile_height = 0;
  double font_size = 0;
  std::vector<PixelRect> tiles;     // one per image, in order
  std::vector<PixelRect> captions;  // the band under each tile (empty rects without captions)
  PixelRect header;                 // empty without a header
};

// The layout for `count` tiles of tile_width x tile_height. Throws lisadiff::Error for no
// tiles, columns < 1, options out of range, or a grid larger than 16384 pixels on a side.
// With fewer images than columns, the grid has only as many columns as images.
GridLayout grid_layout(int count, int tile_width, int tile_height, int columns, bool captioned,
                       const GridOptions& options = {});

// Tiles `images` in a grid of `columns` columns, left to right then top to bottom, with
// captions[i] under images[i]. `captions` is empty (no caption bands) or has one entry per
// image (an empty string leaves its band blank). Throws lisadiff::Error, naming the image by
// its index, for an empty list, an empty image, images of different sizes or a caption count
// that does not match.
RgbImage captioned_grid(const std::vector<RgbView>& images, const std::vector<std::string>& captions, int columns,
                        const GridOptions& options = {});

// A view of a uint8 [H, W, 3] contiguous CPU tensor (which must outlive the view). Throws
// lisadiff::Error for another dtype, layout or device.
RgbView rgb_view(const torch::Tensor& hwc_uint8);

// captioned_grid, written atomically as a PNG to `path`.
void write_captioned_grid(const std::filesystem::path& path, const std::vector<RgbView>& images,
                          const std::vector<std::string>& captions, int columns, const GridOptions& options = {});

}  // namespace lisadiff::io
