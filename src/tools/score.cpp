#include "tools/score.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/image.h"
#include "io/atomic_file.h"
#include "tools/make_dataset.h"

namespace lisadiff::tools {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

using Color = std::array<double, 3>;

double distance2(const Color& a, const Color& b) {
  double d = 0;
  for (int c = 0; c < 3; ++c) d += (a[c] - b[c]) * (a[c] - b[c]);
  return d;
}

std::string nearest_palette_name(const Color& c) {
  std::string best;
  double best_d = std::numeric_limits<double>::infinity();
  for (const auto& name : dataset_color_names()) {
    const auto rgb = *dataset_color(name);
    const double d = distance2(c, {double(rgb.r), double(rgb.g), double(rgb.b)});
    if (d < best_d) best_d = d, best = name;
  }
  return best;
}

// Per-channel median of a list of pixels (the upper median for an even count).
Color median(std::vector<Color> pixels) {
  Color out{};
  const std::size_t mid = pixels.size() / 2;
  for (int c = 0; c < 3; ++c) {
    std::nth_element(pixels.begin(), pixels.begin() + static_cast<std::ptrdiff_t>(mid), pixels.end(),
                     [c](const Color& a, const Color& b) { return a[c] < b[c]; });
    out[c] = pixels[mid][c];
  }
  return out;
}

std::vector<std::string> words_of(const std::string& text) {
  std::vector<std::string> words;
  std::string w;
  for (char ch : text) {
    if (std::isalpha(static_cast<unsigned char>(ch))) {
      w += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!w.empty()) {
      words.push_back(std::move(w));
      w.clear();
    }
  }
  if (!w.empty()) words.push_back(std::move(w));
  return words;
}

bool contains(const std::vector<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

// The image and prompt of one index line; empty file when the line names none.
std::pair<std::string, std::string> entry_of(const Json& line) {
  auto text = [&](const char* key) { return line.contains(key) && line[key].is_string() ? line[key].get<std::string>() : ""; };
  if (!text("file").empty()) return {text("file"), text("prompt")};
  if (!text("edited_image_file_name").empty()) return {text("edited_image_file_name"), text("edit_prompt")};
  if (!text("jpg_0_file_name").empty() && line.contains("label_0") && line["label_0"].is_number()) {
    // The preferred image is what the caption describes (a tie has no preferred image).
    const double label = line["label_0"].get<double>();
    if (label == 1.0) return {text("jpg_0_file_name"), text("caption")};
    if (label == 0.0) return {text("jpg_1_file_name"), text("caption")};
    return {};
  }
  return {text("file_name"), text("text").empty() ? text("caption") : text("text")};
}

Json tally_json(const Tally& t) { return Json{{"hits", t.hits}, {"judged", t.judged}, {"rate", t.rate()}}; }

}  // namespace

SceneReading read_scene(const torch::Tensor& hwc) {
  if (hwc.dim() != 3 || hwc.size(2) != 3 || hwc.scalar_type() != torch::kUInt8) {
    throw Error("score: expected a uint8 [H, W, 3] image");
  }
  const auto img = hwc.contiguous();
  const int64_t h = img.size(0), w = img.size(1);
  const std::uint8_t* p = img.data_ptr<std::uint8_t>();
  auto at = [&](int64_t y, int64_t x) {
    const std::uint8_t* q = p + (y * w + x) * 3;
    return Color{double(q[0]), double(q[1]), double(q[2])};
  };
  SceneReading r;
  if (h == 0 || w == 0) return r;
  // Corner patches: a sixteenth of the short side, as make-dataset's margin.
  const int64_t k = std::max<int64_t>(1, std::min(h, w) / 16);
  std::vector<Color> corners;
  for (int64_t y = 0; y < k; ++y) {
    for (int64_t x = 0; x < k; ++x) {
      corners.push_back(at(y, x));
      corners.push_back(at(y, w - 1 - x));
      corners.push_back(at(h - 1 - y, x));
      corners.push_back(at(h - 1 - y, w - 1 - x));
    }
  }
  const Color bg = median(corners);
  r.background = nearest_palette_name(bg);

  std::vector<Color> shape_pixels;
  std::vector<int64_t> row_count(static_cast<std::size_t>(h), 0);
  int64_t top = h, bottom = -1, left = w, right = -1;
  const double limit2 = kForegroundDistance * kForegroundDistance;
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const Color c = at(y, x);
      if (distance2(c, bg) <= limit2) continue;
      shape_pixels.push_back(c);
      ++row_count[static_cast<std::size_t>(y)];
      top = std::min(top, y), bottom = std::max(bottom, y);
      left = std::min(left, x), right = std::max(right, x);
    }
  }
  if (shape_pixels.size() < 4) return r;
  r.color = nearest_palette_name(median(shape_pixels));
  const int64_t box_h = bottom - top + 1, box_w = right - left + 1;
  r.fill = static_cast<double>(shape_pixels.size()) / static_cast<double>(box_h * box_w);
  const int64_t quarter = std::max<int64_t>(1, box_h / 4);
  int64_t top_pixels = 0, bottom_pixels = 0;
  for (int64_t i = 0; i < quarter; ++i) {
    top_pixels += row_count[static_cast<std::size_t>(top + i)];
    bottom_pixels += row_count[static_cast<std::size_t>(bottom - i)];
  }
  if (r.fill >= 0.88) {
    r.shape = "square";
  } else if (static_cast<double>(top_pixels) < 0.6 * static_cast<double>(bottom_pixels)) {
    r.shape = "triangle";
  } else {
    r.shape = "circle";
  }
  return r;
}

PromptWants parse_prompt(const std::string& prompt) {
  const auto words = words_of(prompt);
  const auto& colors = dataset_color_names();
  const auto& shapes = dataset_shape_names();
  PromptWants wants;
  for (std::size_t i = 0; i < words.size(); ++i) {
    if (contains(shapes, words[i]) && wants.shape.empty()) wants.shape = words[i];
    if (!contains(colors, words[i])) continue;
    const bool of_background = i + 1 < words.size() && words[i + 1] == "background";
    auto& slot = of_background ? wants.background : wants.color;
    if (slot.empty()) slot = words[i];
  }
  return wants;
}

ScoreSummary score_folder(const fs::path& folder) {
  fs::path index = folder / "images.jsonl";
  if (!fs::exists(index)) index = folder / "metadata.jsonl";
  if (!fs::exists(index)) {
    throw Error(folder.string() + ": no images.jsonl (lisadiff generate) or metadata.jsonl (make-dataset) to score");
  }
  ScoreSummary summary;
  std::istringstream lines(io::read_file(index));
  std::string line;
  int line_number = 0;
  while (std::getline(lines, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = index.string() + ":" + std::to_string(line_number);
    Json record;
    try {
      record = Json::parse(line);
    } catch (const std::exception&) {
      throw Error(where + ": not a JSON object");
    }
    if (!record.is_object()) throw Error(where + ": not a JSON object");
    auto [file, prompt] = entry_of(record);
    if (file.empty()) continue;  // a DPO tie: no preferred image
    const fs::path path = folder / file;
    ImageScore s;
    s.file = file;
    s.prompt = prompt;
    s.wants = parse_prompt(prompt);
    // An edit (generate --image): the edited image keeps the source's background, and its
    // shape unless the prompt names one.
    if (record.contains("image") && record["image"].is_string()) {
      fs::path source = record["image"].get<std::string>();
      if (source.is_relative() && !fs::exists(source)) source = folder / source;
      const auto original = read_scene(data::decode_image(io::read_file(source), source.string()));
      s.wants.background = original.background;
      if (s.wants.shape.empty()) s.wants.shape = original.shape;
    }
    s.seen = read_scene(data::decode_image(io::read_file(path), path.string()));
    auto count = [](Tally& t, const std::string& want, const std::string& seen) {
      if (want.empty()) return;
      ++t.judged;
      t.hits += want == seen;
    };
    count(summary.color, s.wants.color, s.seen.color);
    count(summary.shape, s.wants.shape, s.seen.shape);
    count(summary.background, s.wants.background, s.seen.background);
    if (!s.wants.color.empty() && !s.wants.shape.empty()) {
      ++summary.color_and_shape.judged;
      summary.color_and_shape.hits += s.wants.color == s.seen.color && s.wants.shape == s.seen.shape;
    }
    summary.images.push_back(std::move(s));
  }
  if (summary.images.empty()) throw Error(index.string() + ": lists no image to score");
  return summary;
}

std::string score_json(const ScoreSummary& summary, bool per_image) {
  Json out;
  out["images"] = summary.images.size();
  out["color"] = tally_json(summary.color);
  out["shape"] = tally_json(summary.shape);
  out["color_and_shape"] = tally_json(summary.color_and_shape);
  out["background"] = tally_json(summary.background);
  if (per_image) {
    Json rows = Json::array();
    for (const auto& s : summary.images) {
      rows.push_back(Json{{"file", s.file},
                          {"prompt", s.prompt},
                          {"want", {{"color", s.wants.color}, {"shape", s.wants.shape}, {"background", s.wants.background}}},
                          {"seen", {{"color", s.seen.color}, {"shape", s.seen.shape}, {"background", s.seen.background}}},
                          {"fill", std::round(s.seen.fill * 1e4) / 1e4}});
    }
    out["per_image"] = std::move(rows);
  }
  return out.dump(per_image ? 1 : -1) + "\n";
}

}  // namespace lisadiff::tools
