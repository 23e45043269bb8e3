// `lisadiff make-dataset`: synthetic datasets whose captions describe their images, in the
// on-disk formats of docs/data.md, so that a short training run of any recipe has something
// it can visibly learn (and the data pipeline has inputs of every kind and format to read).
//
// Every image is a solid background with one filled shape (circle, square or triangle, its
// edges anti-aliased) of another colour from an 8-colour palette, fully inside the image and
// at least a third of its short side across. What each kind holds per example:
//   t2i   the image; caption "a red circle on a blue background"
//   ip2p  the image; the same scene with the shape recoloured; "make the circle green"
//   dpo   image A, described by the caption, and image B with the shape's colour or kind
//         changed; label_0 is 1 (A is jpg_0) or 0 (A is jpg_1), or 0.5 for a tie
// Fully deterministic: example i is drawn from a std::mt19937_64 seeded with (seed, i), so the
// same options give byte-identical files, and a dataset of n examples is the first n of any
// larger one made with the same seed and size options.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/canvas.h"

namespace lisadiff::tools {

using io::Rgb;

struct MakeDatasetOptions {
  std::string kind;                  // "t2i", "ip2p" or "dpo"
  std::string format;                // "folder" (metadata.jsonl + images/) or "wds" (tar shards)
  std::int64_t n = 0;                // examples, 1 to 999,999,999 (keys have nine digits)
  std::filesystem::path out;         // must be missing or empty, unless overwrite
  std::uint64_t seed = 0;
  int size = 256;                    // image side in pixels, 8 to 4096
  bool vary_size = false;            // width and height each drawn from [size, 3 * size / 2]
  std::string image_format = "png";  // "png" or "jpg" (quality 95)
  std::int64_t shard_size = 100;     // wds: examples per shard
  double tie_share = 0;              // dpo: probability that an example is a tie (label_0 0.5)
  // t2i: the palette colours shapes and backgrounds may have and the shapes drawn (empty: all).
  // Without them the draws are the unrestricted ones, so existing datasets keep their bytes.
  std::vector<std::string> colors, backgrounds, shapes;
  bool overwrite = false;            // replace a non-empty `out`
};

struct MakeDatasetSummary {
  std::int64_t examples = 0;
  std::int64_t files = 0;    // every file written (images + metadata.jsonl, or shards)
  std::uint64_t bytes = 0;   // their total size
  std::filesystem::path out;
};

// Throws lisadiff::Error naming the flag ("--size: ...") for an invalid option.
void validate(const MakeDatasetOptions& options);

// Validates, then writes the dataset under a hidden temporary folder beside `out` and renames
// it into place (replacing `out` when overwrite is set), so an interrupted run leaves no half
// dataset. Throws lisadiff::Error, naming the file or folder, on failure.
MakeDatasetSummary make_dataset(const MakeDatasetOptions& options);

// The palette, by the names the captions use.
const std::vector<std::string>& dataset_color_names();  // red, green, blue, yellow, ...
std::optional<Rgb> dataset_color(std::string_view name);
const std::vector<std::string>& dataset_shape_names();  // circle, square, triangle

}  // namespace lisadiff::tools
