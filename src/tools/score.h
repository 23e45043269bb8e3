// `lisadiff score`: how often images show what their prompts ask for, on make-dataset's
// world (one filled shape of one palette colour on a plain background). The scenes are simple
// enough to read from pixel statistics alone, so no model judges another:
//   background  the median of the four corner patches (make-dataset keeps the corners clear),
//               named by the nearest palette colour
//   shape pixels those farther than kForegroundDistance from the background colour
//   colour      the median of the shape pixels, named by the nearest palette colour
//   shape       from the shape pixels' bounding box: filled (>= 0.88) is a square; a top
//               quarter holding under 0.6 of the bottom quarter's pixels is a triangle (the
//               apex is at the top); anything else is a circle
// An image with fewer than 4 shape pixels shows no shape (colour and shape count as misses).
//
// What a prompt asks for is read from its words: "a red circle on a blue background" asks for
// a red circle on blue; "make the circle green" (InstructPix2Pix edits) for a green circle.
// A prompt without a palette colour or a shape word is not judged on that property. An edited
// image (a generate --image output: its line names the source "image") must keep the source's
// background, and its shape unless the prompt names another.
//
// The folder is a `lisadiff generate` output (images.jsonl: file, prompt) or a make-dataset
// folder (metadata.jsonl: file_name + text, or edited_image_file_name + edit_prompt, or
// jpg_0/jpg_1 + caption + label_0 for the preferred image).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace lisadiff::tools {

inline constexpr double kForegroundDistance = 60.0;  // RGB distance; palette pairs are >= 100 apart

// What pixels show (empty when not found).
struct SceneReading {
  std::string background, color, shape;
  double fill = 0;  // shape pixels / bounding box
};
// `hwc` uint8 [H, W, 3]. Throws lisadiff::Error for another shape or dtype.
SceneReading read_scene(const torch::Tensor& hwc);

// What a prompt asks for (empty: not asked).
struct PromptWants {
  std::string background, color, shape;
};
PromptWants parse_prompt(const std::string& prompt);

struct ImageScore {
  std::string file, prompt;
  PromptWants wants;
  SceneReading seen;
};

struct Tally {
  std::int64_t hits = 0, judged = 0;
  double rate() const { return judged ? static_cast<double>(hits) / static_cast<double>(judged) : 0.0; }
};

struct ScoreSummary {
  std::vector<ImageScore> images;
  Tally color, shape, background, color_and_shape;
};

// Scores every image the folder's index lists. Throws lisadiff::Error naming the file for a
// missing or malformed index, a missing or corrupt image, or an index without images.
ScoreSummary score_folder(const std::filesystem::path& folder);

// The summary as JSON: {"images": n, "color": {"hits", "judged", "rate"}, ..., "per_image": [...]}.
std::string score_json(const ScoreSummary& summary, bool per_image);

}  // namespace lisadiff::tools
