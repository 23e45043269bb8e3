#include "tools/make_dataset.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/usage_error.h"
#include "data/image.h"
#include "data/transforms.h"
#include "data/wds_writer.h"
#include "io/atomic_file.h"

namespace lisadiff::tools {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

constexpr std::int64_t kMaxExamples = 999'999'999;  // keys are nine digits
constexpr std::int64_t kMaxShards = 100'000;         // shard names are five digits
constexpr int kMinSize = 8;
constexpr int kMaxSize = 4096;
constexpr int kJpegQuality = 95;

struct NamedColor {
  const char* name;
  Rgb rgb;
};

// Far enough apart that every pair differs by at least 100 in some channel, so JPEG
// artefacts never make one colour look like another.
constexpr std::array<NamedColor, 8> kPalette = {{
    {"red", {220, 30, 30}},
    {"green", {30, 170, 50}},
    {"blue", {30, 60, 220}},
    {"yellow", {245, 220, 30}},
    {"orange", {245, 130, 20}},
    {"purple", {140, 40, 180}},
    {"white", {250, 250, 250}},
    {"black", {15, 15, 15}},
}};
constexpr int kColors = static_cast<int>(kPalette.size());

enum Shape { kCircle, kSquare, kTriangle, kShapes };
constexpr std::array<const char*, kShapes> kShapeNames = {"circle", "square", "triangle"};

// ---------------------------------------------------------------------------------------------
// Random draws. std::uniform_int_distribution and friends are implementation-defined; these
// are not, so the files are the same whichever standard library built lisadiff.
// ---------------------------------------------------------------------------------------------

// Example i has its own generator, so it does not depend on n or on the examples before it;
// its seed is the loader's per-sample seed mix.
std::mt19937_64 example_rng(std::uint64_t seed, std::int64_t index) {
  return std::mt19937_64(data::mix_seed(seed, static_cast<std::uint64_t>(index)));
}

// Uniform in [0, n) up to a bias of n / 2^64, which nothing here can see.
int below(std::mt19937_64& rng, int n) { return static_cast<int>(rng() % static_cast<std::uint64_t>(n)); }
// Uniform in [lo, hi].
int between(std::mt19937_64& rng, int lo, int hi) { return lo + below(rng, hi - lo + 1); }
// Uniform in [0, 1), 53 bits.
double unit(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// A palette index other than a and b.
int other_color(std::mt19937_64& rng, int a, int b) {
  int k = below(rng, a == b ? kColors - 1 : kColors - 2);
  for (int c = 0; c < kColors; ++c) {
    if (c == a || c == b) continue;
    if (k-- == 0) return c;
  }
  return 0;  // unreachable
}

// ---------------------------------------------------------------------------------------------
// Scenes: one shape on a background, and their pixels
// ---------------------------------------------------------------------------------------------

struct Scene {
  int width = 0, height = 0;
  int background = 0;  // palette index
  int color = 0;       // palette index of the shape
  Shape shape = kCircle;
  int left = 0, top = 0, extent = 0;  // the shape's bounding square
};

// Palette or shape indices of `names` (all `count` of them when empty).
std::vector<int> indices_of(const std::vector<std::string>& names, const std::vector<std::string>& all) {
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(all.size()); ++i) {
    if (names.empty() || std::find(names.begin(), names.end(), all[static_cast<std::size_t>(i)]) != names.end()) {
      out.push_back(i);
    }
  }
  return out;
}

Scene draw_scene(std::mt19937_64& rng, const MakeDatasetOptions& o) {
  Scene s;
  s.width = o.vary_size ? between(rng, o.size, o.size * 3 / 2) : o.size;
  s.height = o.vary_size ? between(rng, o.size, o.size * 3 / 2) : o.size;
  if (o.colors.empty() && o.backgrounds.empty() && o.shapes.empty()) {
    s.background = below(rng, kColors);
    s.color = other_color(rng, s.background, s.background);
    s.shape = static_cast<Shape>(below(rng, kShapes));
  } else {
    const auto backgrounds = indices_of(o.backgrounds, dataset_color_names());
    s.background = backgrounds[static_cast<std::size_t>(below(rng, static_cast<int>(backgrounds.size())))];
    auto colors = indices_of(o.colors, dataset_color_names());
    colors.erase(std::remove(colors.begin(), colors.end(), s.background), colors.end());  // validate() keeps one
    s.color = colors[static_cast<std::size_t>(below(rng, static_cast<int>(colors.size())))];
    const auto shapes = indices_of(o.shapes, dataset_shape_names());
    s.shape = static_cast<Shape>(shapes[static_cast<std::size_t>(below(rng, static_cast<int>(shapes.size())))]);
  }
  // A margin keeps the corners background (a reader can take the background colour there),
  // and the shape is a third to two thirds of the short side across.
  const int short_side = std::min(s.width, s.height);
  const int margin = std::max(1, short_side / 16);
  const int hi = std::min(short_side * 2 / 3, short_side - 2 * margin);
  const int lo = std::min(hi, (short_side + 2) / 3);
  s.extent = between(rng, lo, hi);
  s.left = between(rng, margin, s.width - margin - s.extent);
  s.top = between(rng, margin, s.height - margin - s.extent);
  return s;
}

// Whether the point (x, y), in pixel coordinates, is inside the shape.
bool covers(const Scene& s, double x, double y) {
  const double half = s.extent / 2.0;
  const double cx = s.left + half;
  switch (s.shape) {
    case kCircle: {
      const double dx = x - cx, dy = y - (s.top + half);
      return dx * dx + dy * dy <= half * half;
    }
    case kSquare:
      return true;  // the bounding square is the shape
    case kTriangle:  // apex at the top centre, base along the bottom edge
      return std::abs(x - cx) <= (y - s.top) / 2.0;
    default:
      return false;
  }
}

// Row-major RGB [H, W, 3]. Edges are anti-aliased with 4 x 4 samples per pixel, mixed in
// integers so that the pixels are exact and identical everywhere.
std::vector<std::uint8_t> render(const Scene& s) {
  constexpr int kSub = 4;
  const Rgb bg = kPalette[s.background].rgb;
  const Rgb fg = kPalette[s.color].rgb;
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(s.width) * s.height * 3);
  for (std::size_t i = 0; i < rgb.size(); i += 3) {
    rgb[i] = bg.r;
    rgb[i + 1] = bg.g;
    rgb[i + 2] = bg.b;
  }
  for (int y = s.top; y < s.top + s.extent; ++y) {
    for (int x = s.left; x < s.left + s.extent; ++x) {
      int c = 0;
      for (int sy = 0; sy < kSub; ++sy) {
        for (int sx = 0; sx < kSub; ++sx) c += covers(s, x + (sx + 0.5) / kSub, y + (sy + 0.5) / kSub);
      }
      if (c == 0) continue;
      constexpr int kAll = kSub * kSub;
      auto mix = [&](int b, int f) { return static_cast<std::uint8_t>((b * (kAll - c) + f * c + kAll / 2) / kAll); };
      std::uint8_t* p = &rgb[(static_cast<std::size_t>(y) * s.width + x) * 3];
      p[0] = mix(bg.r, fg.r);
      p[1] = mix(bg.g, fg.g);
      p[2] = mix(bg.b, fg.b);
    }
  }
  return rgb;
}

std::string encode(const Scene& s, const std::string& image_format) {
  const auto rgb = render(s);
  return image_format == "jpg" ? data::encode_jpeg(rgb.data(), s.width, s.height, kJpegQuality)
                               : data::encode_png(rgb.data(), s.width, s.height);
}

std::string caption(const Scene& s) {
  return std::string("a ") + kPalette[s.color].name + " " + kShapeNames[s.shape] + " on a " +
         kPalette[s.background].name + " background";
}

// Four decimals: short, stable JSON numbers.
double round4(double x) { return std::floor(x * 1e4) / 1e4; }

// ---------------------------------------------------------------------------------------------
// Examples, independent of the on-disk format
// ---------------------------------------------------------------------------------------------

struct ImageColumn {
  std::string column;  // docs/data.md's column name: image, input_image, jpg_0, ...
  std::string suffix;  // file name suffix in the folder format: "", "_input", "_0", ...
  std::string bytes;
};

struct Example {
  std::vector<ImageColumn> images;
  std::vector<std::pair<std::string, std::string>> texts;  // (column, text)
  Json info;  // the wds format's KEY.json (t2i: size, watermark, aesthetic; dpo: label_0)
  std::optional<double> label_0;
};

Example make_t2i(std::mt19937_64& rng, const MakeDatasetOptions& o) {
  const Scene s = draw_scene(rng, o);
  Example ex;
  ex.images.push_back({"image", "", encode(s, o.image_format)});
  ex.texts.emplace_back("text", caption(s));
  // The fields LAION-style shards carry and the LCM script filters on (pwatermark <= 0.5):
  // every example passes that filter.
  ex.info["original_width"] = s.width;
  ex.info["original_height"] = s.height;
  ex.info["pwatermark"] = round4(0.5 * unit(rng));
  ex.info["aesthetic"] = round4(5.0 + 2.0 * unit(rng));
  return ex;
}

Example make_ip2p(std::mt19937_64& rng, const MakeDatasetOptions& o) {
  const Scene original = draw_scene(rng, o);
  Scene edited = original;
  edited.color = other_color(rng, original.background, original.color);
  Example ex;
  ex.images.push_back({"input_image", "_input", encode(original, o.image_format)});
  ex.images.push_back({"edited_image", "_edited", encode(edited, o.image_format)});
  ex.texts.emplace_back("edit_prompt",
                        std::string("make the ") + kShapeNames[original.shape] + " " + kPalette[edited.color].name);
  return ex;
}

Example make_dpo(std::mt19937_64& rng, const MakeDatasetOptions& o) {
  const Scene a = draw_scene(rng, o);  // what the caption describes
  Scene b = a;
  if (below(rng, 2) == 0) {
    b.color = other_color(rng, a.background, a.color);
  } else {
    b.shape = static_cast<Shape>((a.shape + 1 + below(rng, kShapes - 1)) % kShapes);
  }
  // Both draws always happen, so tie_share changes which examples are ties and nothing else.
  const bool tie = unit(rng) < o.tie_share;
  const bool a_first = below(rng, 2) == 0;
  const double label_0 = tie ? 0.5 : (a_first ? 1.0 : 0.0);
  std::string bytes_a = encode(a, o.image_format), bytes_b = encode(b, o.image_format);
  if (!tie && !a_first) std::swap(bytes_a, bytes_b);  // label_0 = 0: the preferred A is jpg_1
  Example ex;
  ex.images.push_back({"jpg_0", "_0", std::move(bytes_a)});
  ex.images.push_back({"jpg_1", "_1", std::move(bytes_b)});
  ex.texts.emplace_back("caption", caption(a));
  ex.label_0 = label_0;
  ex.info["label_0"] = label_0;
  return ex;
}

Example make_example(const MakeDatasetOptions& o, std::int64_t index) {
  auto rng = example_rng(o.seed, index);
  if (o.kind == "ip2p") return make_ip2p(rng, o);
  if (o.kind == "dpo") return make_dpo(rng, o);
  return make_t2i(rng, o);
}

std::string example_key(std::int64_t index) {
  char key[24];
  std::snprintf(key, sizeof key, "%09lld", static_cast<long long>(index));
  return key;
}

// ---------------------------------------------------------------------------------------------
// The two formats (docs/data.md)
// ---------------------------------------------------------------------------------------------

class ExampleWriter {
 public:
  virtual ~ExampleWriter() = default;
  virtual void add(const std::string& key, const Example& example) = 0;
  virtual void finish() = 0;
};

void write_plain_file(const fs::path& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (file) file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (file) file.close();
  if (!file) throw Error(path.string(), std::string("cannot write: ") + std::strerror(errno));
}

// DIR/metadata.jsonl + DIR/images/. The images need no temporary names of their own: the
// whole folder is renamed into place at the end.
class FolderWriter : public ExampleWriter {
 public:
  FolderWriter(fs::path dir, std::string extension) : dir_(std::move(dir)), extension_(std::move(extension)) {
    std::error_code ec;
    fs::create_directories(dir_ / "images", ec);
    if (ec) throw Error((dir_ / "images").string(), "cannot create: " + ec.message());
  }

  void add(const std::string& key, const Example& example) override {
    Json line;
    for (const auto& image : example.images) {
      const std::string name = "images/" + key + image.suffix + "." + extension_;
      write_plain_file(dir_ / name, image.bytes);
      // The single column named "image" uses the plain key, as `datasets` does.
      line[image.column == "image" ? "file_name" : image.column + "_file_name"] = name;
    }
    if (example.label_0) line["label_0"] = *example.label_0;  // before the caption, as docs/data.md lists it
    for (const auto& [column, text] : example.texts) line[column] = text;
    metadata_ += line.dump() + "\n";
  }

  void finish() override { io::write_file_atomic(dir_ / "metadata.jsonl", metadata_); }

 private:
  fs::path dir_;
  std::string extension_;
  std::string metadata_;
};

// DIR/00000.tar, ...: members KEY.<ext> / KEY.<column>.<ext>, KEY.txt / KEY.<column>.txt,
// KEY.json.
class WdsWriter : public ExampleWriter {
 public:
  WdsWriter(fs::path dir, std::int64_t shard_size, std::string extension)
      : shards_(std::move(dir), shard_size), extension_(std::move(extension)) {}

  void add(const std::string& key, const Example& example) override {
    // t2i uses webdataset's plain fields (KEY.png, KEY.txt), the other kinds name the column.
    const bool t2i = example.images.size() == 1 && example.images[0].column == "image";
    data::SampleFields fields;
    for (const auto& image : example.images) {
      fields.emplace_back(t2i ? extension_ : image.column + "." + extension_, image.bytes);
    }
    for (const auto& [column, text] : example.texts) fields.emplace_back(t2i ? "txt" : column + ".txt", text);
    if (!example.info.empty()) fields.emplace_back("json", example.info.dump());
    shards_.add(key, fields);
  }

  void finish() override { shards_.finish(); }

 private:
  data::ShardWriter shards_;
  std::string extension_;
};

// ---------------------------------------------------------------------------------------------
// The output folder
// ---------------------------------------------------------------------------------------------

// Absolute, without a trailing separator, so that parent_path() and filename() mean what
// they say for "out/", "." and relative paths.
fs::path normalized(const fs::path& path) {
  fs::path p = fs::absolute(path).lexically_normal();
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p;
}

void check_out(const MakeDatasetOptions& o, const fs::path& out) {
  std::error_code ec;
  const auto status = fs::symlink_status(out, ec);
  if (!fs::exists(status) || o.overwrite) return;
  if (!fs::is_directory(status)) {
    throw Error(o.out.string(), "exists and is not a folder (pass --overwrite to replace it)");
  }
  if (!fs::is_empty(out, ec) || ec) {
    throw Error(o.out.string(), "exists and is not empty (pass --overwrite to replace it)");
  }
}

// Moves the finished folder to `out`, replacing what is there (an empty folder, or anything
// when overwriting); the old content is moved aside first and removed only once the new
// folder is in place.
void move_into_place(const fs::path& tmp, const fs::path& out, const std::string& shown) {
  std::error_code ec;
  fs::path old;
  if (fs::exists(fs::symlink_status(out, ec))) {
    old = out.parent_path() / ("." + out.filename().string() + ".old." + std::to_string(getpid()));
    fs::remove_all(old, ec);
    fs::rename(out, old, ec);
    if (ec) throw Error(shown, "cannot move the existing content aside: " + ec.message());
  }
  fs::rename(tmp, out, ec);
  if (ec) {
    std::error_code ignored;
    if (!old.empty()) fs::rename(old, out, ignored);
    throw Error(shown, "cannot rename " + tmp.string() + " into place: " + ec.message());
  }
  io::fsync_directory(out.parent_path());
  if (!old.empty()) fs::remove_all(old, ec);
}

MakeDatasetSummary measure(const fs::path& dir) {
  MakeDatasetSummary summary;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    ++summary.files;
    summary.bytes += entry.file_size();
  }
  return summary;
}

}  // namespace

const std::vector<std::string>& dataset_color_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& c : kPalette) v.emplace_back(c.name);
    return v;
  }();
  return names;
}

const std::vector<std::string>& dataset_shape_names() {
  static const std::vector<std::string> names(kShapeNames.begin(), kShapeNames.end());
  return names;
}

std::optional<Rgb> dataset_color(std::string_view name) {
  for (const auto& c : kPalette) {
    if (name == c.name) return c.rgb;
  }
  return std::nullopt;
}

void validate(const MakeDatasetOptions& o) {
  if (o.kind != "t2i" && o.kind != "ip2p" && o.kind != "dpo") {
    throw UsageError("--kind: expected t2i, ip2p or dpo, got '" + o.kind + "'");
  }
  if (o.format != "folder" && o.format != "wds") {
    throw UsageError("--format: expected folder or wds, got '" + o.format + "'");
  }
  if (o.n < 1 || o.n > kMaxExamples) {
    throw UsageError("--n: expected 1 to " + std::to_string(kMaxExamples) + " examples (keys have nine digits), got " +
                std::to_string(o.n));
  }
  if (o.out.empty()) throw UsageError("--out: an output folder is required");
  if (o.size < kMinSize || o.size > kMaxSize) {
    throw UsageError("--size: expected " + std::to_string(kMinSize) + " to " + std::to_string(kMaxSize) +
                " pixels, got " + std::to_string(o.size));
  }
  if (o.image_format != "png" && o.image_format != "jpg") {
    throw UsageError("--image-format: expected png or jpg, got '" + o.image_format + "'");
  }
  if (o.shard_size < 1) throw UsageError("--shard-size: expected at least 1, got " + std::to_string(o.shard_size));
  if (o.format == "wds" && (o.n + o.shard_size - 1) / o.shard_size > kMaxShards) {
    throw UsageError("--shard-size: " + std::to_string(o.n) + " examples in shards of " + std::to_string(o.shard_size) +
                " need more than " + std::to_string(kMaxShards) + " shards (names have five digits)");
  }
  if (!(o.tie_share >= 0 && o.tie_share <= 1)) {
    throw UsageError("--tie-share: expected a fraction in [0, 1], got " + std::to_string(o.tie_share));
  }
  if (o.tie_share > 0 && o.kind != "dpo") throw UsageError("--tie-share: only --kind dpo has ties");
  auto check_names = [](const char* flag, const std::vector<std::string>& names, const std::vector<std::string>& all) {
    for (const auto& n : names) {
      if (std::find(all.begin(), all.end(), n) != all.end()) continue;
      std::string known;
      for (const auto& a : all) known += (known.empty() ? "" : ", ") + a;
      throw UsageError(std::string(flag) + ": unknown name '" + n + "' (expected " + known + ")");
    }
  };
  check_names("--colors", o.colors, dataset_color_names());
  check_names("--backgrounds", o.backgrounds, dataset_color_names());
  check_names("--shapes", o.shapes, dataset_shape_names());
  if ((!o.colors.empty() || !o.backgrounds.empty() || !o.shapes.empty()) && o.kind != "t2i") {
    throw UsageError("--colors, --backgrounds, --shapes: only --kind t2i draws restricted scenes");
  }
  if (o.colors.size() == 1 &&
      (o.backgrounds.empty() || std::find(o.backgrounds.begin(), o.backgrounds.end(), o.colors[0]) != o.backgrounds.end())) {
    throw UsageError("--backgrounds: a shape's colour differs from its background, and '" + o.colors[0] +
                "', the only --colors entry, is also a background colour");
  }
}

MakeDatasetSummary make_dataset(const MakeDatasetOptions& o) {
  validate(o);
  const fs::path out = normalized(o.out);
  if (!out.has_filename() || out == out.root_path()) throw Error(o.out.string(), "cannot replace the root folder");
  check_out(o, out);
  std::error_code ec;
  fs::create_directories(out.parent_path(), ec);
  if (ec) throw Error(out.parent_path().string(), "cannot create: " + ec.message());

  const fs::path tmp = out.parent_path() / ("." + out.filename().string() + ".tmp." + std::to_string(getpid()));
  fs::remove_all(tmp, ec);  // left over from a crashed run of a process with this pid
  MakeDatasetSummary summary;
  try {
    std::unique_ptr<ExampleWriter> writer;
    if (o.format == "wds") {
      writer = std::make_unique<WdsWriter>(tmp, o.shard_size, o.image_format);
    } else {
      writer = std::make_unique<FolderWriter>(tmp, o.image_format);
    }
    // Examples are drawn and encoded in parallel, a batch at a time, and written in order:
    // each has its own generator, so the threads cannot change a byte.
    const std::int64_t batch = 8 * std::max(1, at::get_num_threads());
    std::vector<Example> examples;
    for (std::int64_t first = 0; first < o.n; first += batch) {
      examples.assign(static_cast<std::size_t>(std::min(batch, o.n - first)), Example{});
      at::parallel_for(0, static_cast<std::int64_t>(examples.size()), 1, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) examples[static_cast<std::size_t>(i)] = make_example(o, first + i);
      });
      for (std::size_t i = 0; i < examples.size(); ++i) {
        writer->add(example_key(first + static_cast<std::int64_t>(i)), examples[i]);
      }
    }
    writer->finish();
    summary = measure(tmp);
    move_into_place(tmp, out, o.out.string());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  summary.examples = o.n;
  summary.out = o.out;
  return summary;
}

}  // namespace lisadiff::tools
