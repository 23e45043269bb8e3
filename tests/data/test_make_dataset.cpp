// `lisadiff make-dataset` and the webdataset shard writer: byte-identical output for the same
// options, the layouts of docs/data.md read back (tars with libarchive), images that show what
// their captions say, ip2p edits that touch the shape only, dpo labels that point at the image
// the caption describes, and the errors (bad options, a non-empty output folder, the CLI).
#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include <ATen/Parallel.h>

#include "data/image.h"
#include "data/wds_writer.h"
#include "test_util.h"
#include "tools/make_dataset.h"

namespace lisadiff::tools {
namespace {

namespace fs = std::filesystem;
using data::SampleFields;
using data::ShardWriter;
using lisadiff::testing::cli_path;
using lisadiff::testing::read_file;
using lisadiff::testing::run_command;
using lisadiff::testing::TempDir;
using lisadiff::testing::write_file;
using Json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Helpers: files, tars, images, captions
// ---------------------------------------------------------------------------------------------

// Every regular file under `dir`, by relative path.
std::map<std::string, std::string> all_files(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) files[fs::relative(entry.path(), dir).string()] = read_file(entry.path());
  }
  return files;
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

struct Member {
  std::string name, data;
  int mode = 0;
  std::int64_t mtime = -1, uid = -1, gid = -1;
  std::string uname;
  bool regular = false;
};

std::vector<Member> read_tar(const fs::path& path) {
  const std::string bytes = read_file(path);
  archive* ar = archive_read_new();
  archive_read_support_format_tar(ar);
  std::vector<Member> members;
  if (archive_read_open_memory(ar, bytes.data(), bytes.size()) != ARCHIVE_OK) {
    ADD_FAILURE() << path << ": " << archive_error_string(ar);
    archive_read_free(ar);
    return members;
  }
  archive_entry* entry = nullptr;
  int rc;
  while ((rc = archive_read_next_header(ar, &entry)) == ARCHIVE_OK) {
    Member m;
    m.name = archive_entry_pathname(entry);
    m.mode = archive_entry_perm(entry);
    m.mtime = archive_entry_mtime(entry);
    m.uid = archive_entry_uid(entry);
    m.gid = archive_entry_gid(entry);
    m.uname = archive_entry_uname(entry) ? archive_entry_uname(entry) : "";
    m.regular = archive_entry_filetype(entry) == AE_IFREG;
    m.data.resize(static_cast<std::size_t>(archive_entry_size(entry)));
    if (!m.data.empty()) {
      EXPECT_EQ(archive_read_data(ar, m.data.data(), m.data.size()), static_cast<la_ssize_t>(m.data.size()));
    }
    members.push_back(std::move(m));
  }
  EXPECT_EQ(rc, ARCHIVE_EOF) << path << ": " << archive_error_string(ar);
  archive_read_free(ar);
  return members;
}

// The samples of a shard list, grouped by key in member order (webdataset's grouping).
struct Sample {
  std::string key;
  std::vector<std::string> fields;  // in member order
  std::map<std::string, std::string> data;
};

std::vector<Sample> read_samples(const fs::path& dir) {
  std::vector<Sample> samples;
  for (const auto& name : names_in(dir)) {
    for (const auto& m : read_tar(dir / name)) {
      const auto dot = m.name.find('.');
      const std::string key = m.name.substr(0, dot), field = m.name.substr(dot + 1);
      if (samples.empty() || samples.back().key != key) samples.push_back({key, {}, {}});
      samples.back().fields.push_back(field);
      samples.back().data[field] = m.data;
    }
  }
  return samples;
}

std::vector<Json> read_metadata(const fs::path& dir) {
  std::vector<Json> lines;
  std::istringstream in(read_file(dir / "metadata.jsonl"));
  for (std::string line; std::getline(in, line);) lines.push_back(Json::parse(line));
  return lines;
}

std::string read_metadata_line(const fs::path& dir, int index) {
  std::istringstream in(read_file(dir / "metadata.jsonl"));
  std::string line;
  for (int i = 0; i <= index; ++i) std::getline(in, line);
  return line;
}

std::vector<std::string> keys_of(const Json& object) {
  std::vector<std::string> keys;
  for (const auto& item : object.items()) keys.push_back(item.key());
  std::sort(keys.begin(), keys.end());
  return keys;
}

struct Image {
  int width = 0, height = 0;
  torch::Tensor pixels;  // uint8 [H, W, 3]
  Rgb at(int x, int y) const {
    auto a = pixels.accessor<std::uint8_t, 3>();
    return {a[y][x][0], a[y][x][1], a[y][x][2]};
  }
};

Image decode(const std::string& bytes) {
  Image image;
  image.pixels = data::decode_image(bytes, "test image");
  image.height = static_cast<int>(image.pixels.size(0));
  image.width = static_cast<int>(image.pixels.size(1));
  return image;
}

// The palette name of a colour: the nearest one, so that JPEG's small errors do not matter.
std::string color_name(Rgb c) {
  std::string best;
  int best_distance = 1 << 30;
  for (const auto& name : dataset_color_names()) {
    const Rgb p = *dataset_color(name);
    const int d = (c.r - p.r) * (c.r - p.r) + (c.g - p.g) * (c.g - p.g) + (c.b - p.b) * (c.b - p.b);
    if (d < best_distance) best_distance = d, best = name;
  }
  return best;
}

// What an image shows: the background (a corner), the shape's colour (the centre of the
// pixels that are not background) and the shape's kind, from how much of its bounding box it
// fills (square 1, circle about pi/4, triangle about 1/2). Exact colours: PNG images only.
struct Seen {
  std::string background, color, shape;
  Rgb background_rgb;
};

Seen look(const Image& image) {
  Seen seen;
  seen.background_rgb = image.at(0, 0);
  int x0 = image.width, y0 = image.height, x1 = -1, y1 = -1;
  std::int64_t count = 0;
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      if (image.at(x, y) == seen.background_rgb) continue;
      ++count;
      x0 = std::min(x0, x), y0 = std::min(y0, y), x1 = std::max(x1, x), y1 = std::max(y1, y);
    }
  }
  seen.background = color_name(seen.background_rgb);
  if (count == 0) return seen;
  seen.color = color_name(image.at((x0 + x1) / 2, (y0 + y1) / 2));
  const double fill = static_cast<double>(count) / ((x1 - x0 + 1) * (y1 - y0 + 1));
  seen.shape = fill > 0.97 ? "square" : fill > 0.7 ? "circle" : "triangle";
  return seen;
}

// "a red circle on a blue background" -> {background, color, shape}.
Seen parse_caption(const std::string& caption) {
  std::istringstream in(caption);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  EXPECT_EQ(words.size(), 7u) << caption;
  if (words.size() != 7) return {};
  EXPECT_EQ(words[0] + " " + words[3] + " " + words[4] + " " + words[6], "a on a background") << caption;
  Seen seen;
  seen.color = words[1], seen.shape = words[2], seen.background = words[5];
  return seen;
}

MakeDatasetOptions options(const std::string& kind, const std::string& format, std::int64_t n, const fs::path& out) {
  MakeDatasetOptions o;
  o.kind = kind;
  o.format = format;
  o.n = n;
  o.out = out;
  o.seed = 7;
  o.size = 64;
  return o;
}

// ---------------------------------------------------------------------------------------------
// ShardWriter
// ---------------------------------------------------------------------------------------------

TEST(ShardWriter, NamesMembersAndStartsANewShardEveryNSamples) {
  TempDir dir;
  ShardWriter writer(dir / "shards", 2);
  for (int i = 0; i < 5; ++i) {
    const std::string key = "sample" + std::to_string(i);
    writer.add(key, {{"png", "image " + std::to_string(i)}, {"txt", "caption"}, {"json", "{}"}});
  }
  EXPECT_EQ(writer.shards().size(), 2u);  // the third is still open
  writer.finish();
  writer.finish();  // idempotent
  EXPECT_EQ(names_in(dir / "shards"), (std::vector<std::string>{"00000.tar", "00001.tar", "00002.tar"}));
  EXPECT_EQ(writer.samples(), 5);
  std::uint64_t bytes = 0;
  for (const auto& shard : writer.shards()) bytes += fs::file_size(shard);
  EXPECT_EQ(writer.bytes(), bytes);

  const auto first = read_tar(dir / "shards" / "00000.tar");
  ASSERT_EQ(first.size(), 6u);
  const std::vector<std::string> expected = {"sample0.png", "sample0.txt", "sample0.json",
                                             "sample1.png", "sample1.txt", "sample1.json"};
  for (std::size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(first[i].name, expected[i]);
    EXPECT_TRUE(first[i].regular);
    EXPECT_EQ(first[i].mode, 0644);
    EXPECT_EQ(first[i].mtime, 0);
    EXPECT_EQ(first[i].uid, 0);
    EXPECT_EQ(first[i].gid, 0);
    EXPECT_EQ(first[i].uname, "");
  }
  EXPECT_EQ(first[3].data, "image 1");
  const auto last = read_tar(dir / "shards" / "00002.tar");
  ASSERT_EQ(last.size(), 3u);
  EXPECT_EQ(last[0].name, "sample4.png");
  EXPECT_EQ(ShardWriter::shard_name(42), "00042.tar");
}

TEST(ShardWriter, SameSamplesGiveByteIdenticalShardsInUstarFormat) {
  TempDir dir;
  for (const char* name : {"a", "b"}) {
    ShardWriter writer(dir / name, 10);
    writer.add("000000000", {{"png", std::string(1000, 'x')}, {"txt", ""}});  // an empty member too
    writer.add("000000001", {{"input_image.png", "abc"}, {"edit_prompt.txt", "make it blue"}});
    writer.finish();
  }
  const std::string a = read_file(dir / "a" / "00000.tar");
  EXPECT_EQ(a, read_file(dir / "b" / "00000.tar"));
  EXPECT_EQ(a.size() % 10240, 0u);             // padded to whole tar records, as Python's tarfile does
  EXPECT_EQ(a.substr(257, 6), std::string("ustar\0", 6));  // no pax header before the first member
  EXPECT_EQ(a.substr(0, 13), "000000000.png");
  const auto members = read_tar(dir / "a" / "00000.tar");
  ASSERT_EQ(members.size(), 4u);
  EXPECT_EQ(members[1].name, "000000000.txt");
  EXPECT_EQ(members[1].data, "");
  EXPECT_EQ(members[3].name, "000000001.edit_prompt.txt");
  EXPECT_EQ(members[3].data, "make it blue");
}

TEST(ShardWriter, RefusesKeysAndFieldsThatReadersWouldSplitDifferently) {
  TempDir dir;
  EXPECT_THROW_WITH(ShardWriter(dir / "x", 0), "samples per shard must be at least 1");
  ShardWriter writer(dir / "shards", 10);
  const std::string shard = (dir / "shards" / "00000.tar").string();
  EXPECT_THROW_WITH(writer.add("", {{"txt", "a"}}), shard, "sample key is empty");
  EXPECT_THROW_WITH(writer.add("a.b", {{"txt", "a"}}), shard, "'a.b'", "no '.'");
  EXPECT_THROW_WITH(writer.add("k", {}), shard, "no fields");
  EXPECT_THROW_WITH(writer.add("k", {{"", "a"}}), shard, "field ''");
  EXPECT_THROW_WITH(writer.add("k", {{"a/b", "a"}}), shard, "field 'a/b'");
  EXPECT_THROW_WITH(writer.add("k", {{"txt", "a"}, {"txt", "b"}}), shard, "field 'txt' given twice");
  writer.add("k", {{"txt", "a"}});
  EXPECT_THROW_WITH(writer.add("k", {{"txt", "a"}}), shard, "repeats the previous sample's key");
  writer.add("dir/k2", {{"txt", "b"}});  // a key may have folders; only its base name matters
  writer.finish();
  EXPECT_THROW_WITH(writer.add("k3", {{"txt", "a"}}), "added after finish()");
  const auto members = read_tar(shard);
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[1].name, "dir/k2.txt");
}

TEST(ShardWriter, AnUnfinishedShardLeavesNothingBehind) {
  TempDir dir;
  {
    ShardWriter writer(dir / "shards", 2);
    writer.add("a", {{"txt", "1"}});
    writer.add("b", {{"txt", "2"}});  // closes 00000.tar
    writer.add("c", {{"txt", "3"}});  // 00001.tar stays open
  }
  EXPECT_EQ(names_in(dir / "shards"), (std::vector<std::string>{"00000.tar"}));  // no temporary file either
}

TEST(ShardWriter, FailuresNameTheFile) {
  TempDir dir;
  write_file(dir / "file", "not a folder");
  EXPECT_THROW_WITH(ShardWriter(dir / "file" / "shards", 1), (dir / "file" / "shards").string(),
                    "cannot create the shard folder");
  // A folder where the shard should go: the rename into place fails.
  fs::create_directories(dir / "shards" / "00000.tar");
  write_file(dir / "shards" / "00000.tar" / "x", "");
  ShardWriter writer(dir / "shards", 1);
  EXPECT_THROW_WITH(writer.add("a", {{"txt", "1"}}), (dir / "shards" / "00000.tar").string(), "rename");
  EXPECT_THROW_WITH(writer.add("b", {{"txt", "1"}}), "an earlier write failed");
  EXPECT_THROW_WITH(writer.finish(), "an earlier write failed");
  EXPECT_EQ(names_in(dir / "shards"), (std::vector<std::string>{"00000.tar"}));  // the temporary file is gone
}

// ---------------------------------------------------------------------------------------------
// make-dataset: determinism and layout
// ---------------------------------------------------------------------------------------------

TEST(MakeDataset, SameOptionsGiveIdenticalFilesAndAnotherSeedDiffers) {
  TempDir dir;
  for (const std::string kind : {"t2i", "ip2p", "dpo"}) {
    for (const std::string format : {"folder", "wds"}) {
      SCOPED_TRACE(kind + " " + format);
      auto o = options(kind, format, 5, dir / (kind + format + "1"));
      o.shard_size = 2;
      o.vary_size = true;
      if (kind == "dpo") o.tie_share = 0.3;
      const auto summary = make_dataset(o);
      EXPECT_EQ(summary.examples, 5);
      o.out = dir / (kind + format + "2");
      make_dataset(o);
      const auto first = all_files(dir / (kind + format + "1"));
      EXPECT_EQ(first, all_files(dir / (kind + format + "2")));
      EXPECT_EQ(summary.files, static_cast<std::int64_t>(first.size()));
      std::uint64_t bytes = 0;
      for (const auto& [name, data] : first) bytes += data.size();
      EXPECT_EQ(summary.bytes, bytes);

      o.seed += 1;
      o.out = dir / (kind + format + "3");
      make_dataset(o);
      const auto other = all_files(o.out);
      EXPECT_EQ(other.size(), first.size());
      EXPECT_NE(other, first);
    }
  }
}

TEST(MakeDataset, TheNumberOfThreadsDoesNotChangeTheBytes) {
  TempDir dir;
  const int threads = at::get_num_threads();
  auto o = options("ip2p", "wds", 40, dir / "one");
  at::set_num_threads(1);
  make_dataset(o);
  at::set_num_threads(3);
  o.out = dir / "three";
  make_dataset(o);
  at::set_num_threads(threads);
  EXPECT_EQ(all_files(dir / "one"), all_files(dir / "three"));
}

TEST(MakeDataset, ASmallDatasetIsThePrefixOfALargerOne) {
  TempDir dir;
  make_dataset(options("dpo", "folder", 3, dir / "small"));
  make_dataset(options("dpo", "folder", 8, dir / "large"));
  const auto small = all_files(dir / "small"), large = all_files(dir / "large");
  for (const auto& [name, data] : small) {
    if (name == "metadata.jsonl") {
      EXPECT_EQ(large.at(name).substr(0, data.size()), data);
    } else {
      EXPECT_EQ(large.at(name), data) << name;
    }
  }
}

TEST(MakeDataset, FolderLayoutPerKind) {
  TempDir dir;
  const std::map<std::string, std::vector<std::string>> keys = {
      {"t2i", {"file_name", "text"}},
      {"ip2p", {"edit_prompt", "edited_image_file_name", "input_image_file_name"}},
      {"dpo", {"caption", "jpg_0_file_name", "jpg_1_file_name", "label_0"}}};
  const std::map<std::string, std::vector<std::string>> spec_order = {
      {"t2i", {"file_name", "text"}},
      {"ip2p", {"input_image_file_name", "edited_image_file_name", "edit_prompt"}},
      {"dpo", {"jpg_0_file_name", "jpg_1_file_name", "label_0", "caption"}}};
  const std::map<std::string, std::vector<std::string>> files = {
      {"t2i", {"images/000000002.png"}},
      {"ip2p", {"images/000000002_input.png", "images/000000002_edited.png"}},
      {"dpo", {"images/000000002_0.png", "images/000000002_1.png"}}};
  for (const auto& [kind, expected_keys] : keys) {
    SCOPED_TRACE(kind);
    const fs::path out = dir / kind;
    make_dataset(options(kind, "folder", 3, out));
    const auto lines = read_metadata(out);
    ASSERT_EQ(lines.size(), 3u);
    for (const auto& line : lines) EXPECT_EQ(keys_of(line), expected_keys) << line.dump();
    // Keys in the order docs/data.md shows them.
    const auto first_line = nlohmann::ordered_json::parse(read_metadata_line(out, 0));
    std::vector<std::string> order;
    for (const auto& item : first_line.items()) order.push_back(item.key());
    EXPECT_EQ(order, spec_order.at(kind));
    const auto& names = files.at(kind);
    const std::vector<std::string> columns =
        kind == "t2i" ? std::vector<std::string>{"file_name"}
        : kind == "ip2p" ? std::vector<std::string>{"input_image_file_name", "edited_image_file_name"}
                         : std::vector<std::string>{"jpg_0_file_name", "jpg_1_file_name"};
    for (std::size_t i = 0; i < columns.size(); ++i) {
      EXPECT_EQ(lines[2][columns[i]], names[i]);
      const auto image = decode(read_file(out / names[i]));
      EXPECT_EQ(image.width, 64);
      EXPECT_EQ(image.height, 64);
    }
    // Nothing but the metadata and the images it names.
    EXPECT_EQ(all_files(out).size(), 1 + 3 * columns.size());
    if (kind == "dpo") {
      for (const auto& line : lines) EXPECT_TRUE(line["label_0"] == 0.0 || line["label_0"] == 1.0) << line.dump();
      EXPECT_NE(read_file(out / "metadata.jsonl").find("\"label_0\":"), std::string::npos);
    }
  }
}

TEST(MakeDataset, WdsLayoutPerKind) {
  TempDir dir;
  const std::map<std::string, std::vector<std::string>> fields = {
      {"t2i", {"png", "txt", "json"}},
      {"ip2p", {"input_image.png", "edited_image.png", "edit_prompt.txt"}},
      {"dpo", {"jpg_0.png", "jpg_1.png", "caption.txt", "json"}}};
  for (const auto& [kind, expected] : fields) {
    SCOPED_TRACE(kind);
    auto o = options(kind, "wds", 5, dir / kind);
    o.shard_size = 2;
    make_dataset(o);
    EXPECT_EQ(names_in(o.out), (std::vector<std::string>{"00000.tar", "00001.tar", "00002.tar"}));
    EXPECT_EQ(read_tar(o.out / "00002.tar").size(), expected.size());  // the last shard has one sample
    const auto samples = read_samples(o.out);
    ASSERT_EQ(samples.size(), 5u);
    for (std::size_t i = 0; i < samples.size(); ++i) {
      EXPECT_EQ(samples[i].key, "00000000" + std::to_string(i));
      EXPECT_EQ(samples[i].fields, expected);
    }
    if (kind == "t2i") {
      for (const auto& s : samples) {
        const auto info = Json::parse(s.data.at("json"));
        EXPECT_EQ(keys_of(info),
                  (std::vector<std::string>{"aesthetic", "original_height", "original_width", "pwatermark"}));
        EXPECT_EQ(info["original_width"], 64);
        EXPECT_EQ(info["original_height"], 64);
        EXPECT_GE(info["pwatermark"].get<double>(), 0.0);
        EXPECT_LT(info["pwatermark"].get<double>(), 1.0);
        EXPECT_TRUE(info["aesthetic"].is_number());
      }
    }
    if (kind == "dpo") {
      for (const auto& s : samples) {
        const auto info = Json::parse(s.data.at("json"));
        EXPECT_EQ(keys_of(info), (std::vector<std::string>{"label_0"}));
        EXPECT_TRUE(info["label_0"] == 0.0 || info["label_0"] == 1.0);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// make-dataset: the images show what the text says
// ---------------------------------------------------------------------------------------------

TEST(MakeDataset, T2iImagesShowWhatTheirCaptionsSay) {
  TempDir dir;
  make_dataset(options("t2i", "folder", 30, dir / "t2i"));
  std::set<std::string> shapes, colors;
  for (const auto& line : read_metadata(dir / "t2i")) {
    const std::string text = line["text"];
    SCOPED_TRACE(text);
    const Seen said = parse_caption(text);
    const Image image = decode(read_file(dir / "t2i" / line["file_name"].get<std::string>()));
    const Seen seen = look(image);
    EXPECT_EQ(seen.background_rgb, *dataset_color(said.background));  // PNG: exact colours
    EXPECT_EQ(seen.background, said.background);
    EXPECT_EQ(seen.color, said.color);
    EXPECT_EQ(seen.shape, said.shape);
    EXPECT_NE(said.color, said.background);
    shapes.insert(said.shape);
    colors.insert(said.color);
  }
  EXPECT_EQ(shapes.size(), 3u);  // every shape, and most colours, in 30 examples
  EXPECT_GE(colors.size(), 6u);
}

TEST(MakeDataset, RestrictedColorsBackgroundsAndShapes) {
  TempDir dir;
  auto o = options("t2i", "folder", 60, dir / "t2i");
  o.colors = {"orange"};
  o.backgrounds = {"red", "blue", "white"};
  o.shapes = {"circle", "triangle"};
  make_dataset(o);
  std::set<std::string> backgrounds, shapes;
  for (const auto& line : read_metadata(dir / "t2i")) {
    const std::string text = line["text"];
    SCOPED_TRACE(text);
    const Seen said = parse_caption(text);
    const Seen seen = look(decode(read_file(dir / "t2i" / line["file_name"].get<std::string>())));
    EXPECT_EQ(said.color, "orange");
    EXPECT_EQ(seen.color, "orange");
    EXPECT_EQ(seen.shape, said.shape);
    EXPECT_EQ(seen.background, said.background);
    backgrounds.insert(said.background);
    shapes.insert(said.shape);
  }
  EXPECT_EQ(backgrounds, (std::set<std::string>{"blue", "red", "white"}));
  EXPECT_EQ(shapes, (std::set<std::string>{"circle", "triangle"}));

  // Every colour but one: the left-out colour never appears, as shape or background.
  auto all_but = options("t2i", "folder", 80, dir / "no-orange");
  for (const auto& name : dataset_color_names()) {
    if (name != "orange") all_but.colors.push_back(name), all_but.backgrounds.push_back(name);
  }
  make_dataset(all_but);
  for (const auto& line : read_metadata(dir / "no-orange")) {
    EXPECT_EQ(line["text"].get<std::string>().find("orange"), std::string::npos) << line["text"];
  }

  auto bad = options("t2i", "folder", 3, dir / "bad");
  bad.colors = {"teal"};
  EXPECT_THROW_WITH(make_dataset(bad), "--colors", "'teal'", "orange");
  bad = options("t2i", "folder", 3, dir / "bad"), bad.shapes = {"star"};
  EXPECT_THROW_WITH(make_dataset(bad), "--shapes", "'star'");
  bad = options("t2i", "folder", 3, dir / "bad"), bad.colors = {"red"};
  EXPECT_THROW_WITH(make_dataset(bad), "--backgrounds", "'red'");
  bad = options("ip2p", "folder", 3, dir / "bad"), bad.colors = {"red", "blue"};
  EXPECT_THROW_WITH(make_dataset(bad), "only --kind t2i");
  EXPECT_FALSE(fs::exists(dir / "bad"));
}

TEST(MakeDataset, JpegImagesOfVariedSizesStillShowTheirCaptions) {
  TempDir dir;
  auto o = options("t2i", "wds", 20, dir / "t2i");
  o.vary_size = true;
  o.image_format = "jpg";
  make_dataset(o);
  std::set<int> widths;
  for (const auto& s : read_samples(o.out)) {
    ASSERT_EQ(s.fields, (std::vector<std::string>{"jpg", "txt", "json"}));
    const Image image = decode(s.data.at("jpg"));
    EXPECT_EQ(data::sniff_image_format(s.data.at("jpg")), data::ImageFormat::kJpeg);
    EXPECT_GE(image.width, 64);
    EXPECT_LE(image.width, 96);
    EXPECT_GE(image.height, 64);
    EXPECT_LE(image.height, 96);
    widths.insert(image.width);
    const auto info = Json::parse(s.data.at("json"));
    EXPECT_EQ(info["original_width"], image.width);
    EXPECT_EQ(info["original_height"], image.height);
    // The corner is background; the shape is the one patch of another colour, so the colour
    // most pixels have after the background's is the shape's.
    const Seen said = parse_caption(s.data.at("txt"));
    EXPECT_EQ(color_name(image.at(0, 0)), said.background) << s.data.at("txt");
    std::map<std::string, int> counts;
    for (int y = 0; y < image.height; ++y) {
      for (int x = 0; x < image.width; ++x) ++counts[color_name(image.at(x, y))];
    }
    counts.erase(said.background);
    const auto most = std::max_element(counts.begin(), counts.end(),
                                       [](const auto& a, const auto& b) { return a.second < b.second; });
    ASSERT_NE(most, counts.end());
    EXPECT_EQ(most->first, said.color) << s.data.at("txt");
  }
  EXPECT_GT(widths.size(), 1u);
}

TEST(MakeDataset, Ip2pEditRecoloursTheShapeAndNothingElse) {
  TempDir dir;
  make_dataset(options("ip2p", "folder", 20, dir / "ip2p"));
  for (const auto& line : read_metadata(dir / "ip2p")) {
    const std::string prompt = line["edit_prompt"];
    SCOPED_TRACE(prompt);
    // "make the circle green"
    std::istringstream words(prompt);
    std::string make, the, shape, new_color;
    words >> make >> the >> shape >> new_color;
    EXPECT_EQ(make + " " + the, "make the");
    const Image input = decode(read_file(dir / "ip2p" / line["input_image_file_name"].get<std::string>()));
    const Image edited = decode(read_file(dir / "ip2p" / line["edited_image_file_name"].get<std::string>()));
    ASSERT_EQ(input.width, edited.width);
    ASSERT_EQ(input.height, edited.height);
    const Seen before = look(input), after = look(edited);
    EXPECT_EQ(before.shape, shape);
    EXPECT_EQ(after.shape, shape);
    EXPECT_EQ(after.color, new_color);
    EXPECT_NE(before.color, new_color);
    EXPECT_EQ(after.background, before.background);
    const Rgb old_rgb = *dataset_color(before.color), new_rgb = *dataset_color(new_color);
    int changed = 0, background = 0;
    for (int y = 0; y < input.height; ++y) {
      for (int x = 0; x < input.width; ++x) {
        const Rgb a = input.at(x, y), b = edited.at(x, y);
        if (a == before.background_rgb) {
          ++background;
          ASSERT_EQ(b, a) << "background pixel (" << x << ", " << y << ") changed";
        } else {
          ++changed;
          ASSERT_NE(b, a) << "shape pixel (" << x << ", " << y << ") kept its colour";
          if (a == old_rgb) ASSERT_EQ(b, new_rgb) << "(" << x << ", " << y << ")";
        }
      }
    }
    EXPECT_GT(changed, 64 * 64 / 20);  // the shape is at least a third of the side across
    EXPECT_GT(background, 0);
  }
}

TEST(MakeDataset, DpoLabelPointsAtTheImageTheCaptionDescribes) {
  TempDir dir;
  auto o = options("dpo", "wds", 40, dir / "dpo");
  make_dataset(o);
  std::map<double, int> labels;
  int recoloured = 0, reshaped = 0;
  for (const auto& s : read_samples(o.out)) {
    const std::string caption = s.data.at("caption.txt");
    SCOPED_TRACE(caption);
    const double label = Json::parse(s.data.at("json"))["label_0"];
    ++labels[label];
    ASSERT_TRUE(label == 0.0 || label == 1.0);
    const Seen said = parse_caption(caption);
    const Seen preferred = look(decode(s.data.at(label == 1.0 ? "jpg_0.png" : "jpg_1.png")));
    const Seen other = look(decode(s.data.at(label == 1.0 ? "jpg_1.png" : "jpg_0.png")));
    EXPECT_EQ(preferred.background, said.background);
    EXPECT_EQ(preferred.color, said.color);
    EXPECT_EQ(preferred.shape, said.shape);
    // The other image: same background, and exactly one of colour and shape changed.
    EXPECT_EQ(other.background, said.background);
    EXPECT_NE(other.color == said.color, other.shape == said.shape);
    recoloured += other.color != said.color;
    reshaped += other.shape != said.shape;
  }
  EXPECT_GT(labels[0.0], 5);  // both orders occur
  EXPECT_GT(labels[1.0], 5);
  EXPECT_GT(recoloured, 5);
  EXPECT_GT(reshaped, 5);
}

TEST(MakeDataset, TieShareMakesTies) {
  TempDir dir;
  auto o = options("dpo", "folder", 40, dir / "half");
  o.tie_share = 0.5;
  make_dataset(o);
  std::map<double, int> labels;
  for (const auto& line : read_metadata(o.out)) ++labels[line["label_0"].get<double>()];
  EXPECT_GT(labels[0.5], 5);
  EXPECT_GT(labels[0.0] + labels[1.0], 5);
  EXPECT_EQ(labels.size(), 3u);

  o.tie_share = 1;
  o.out = dir / "all";
  make_dataset(o);
  for (const auto& line : read_metadata(o.out)) EXPECT_EQ(line["label_0"], 0.5);
}

// ---------------------------------------------------------------------------------------------
// make-dataset: errors
// ---------------------------------------------------------------------------------------------

TEST(MakeDataset, BadOptionsNameTheFlag) {
  TempDir dir;
  const auto good = options("t2i", "wds", 3, dir / "out");
  auto o = good;
  o.kind = "t2v";
  EXPECT_THROW_WITH(make_dataset(o), "--kind", "'t2v'");
  o = good, o.format = "zip";
  EXPECT_THROW_WITH(make_dataset(o), "--format", "'zip'");
  o = good, o.n = 0;
  EXPECT_THROW_WITH(make_dataset(o), "--n", "got 0");
  o = good, o.n = 1'000'000'000;
  EXPECT_THROW_WITH(make_dataset(o), "--n", "nine digits");
  o = good, o.size = 7;
  EXPECT_THROW_WITH(make_dataset(o), "--size", "got 7");
  o = good, o.size = 4097;
  EXPECT_THROW_WITH(make_dataset(o), "--size", "got 4097");
  o = good, o.image_format = "webp";
  EXPECT_THROW_WITH(make_dataset(o), "--image-format", "'webp'");
  o = good, o.shard_size = 0;
  EXPECT_THROW_WITH(make_dataset(o), "--shard-size");
  o = good, o.n = 200'001, o.shard_size = 2;
  EXPECT_THROW_WITH(make_dataset(o), "--shard-size", "100000 shards");
  o = good, o.kind = "dpo", o.tie_share = 1.5;
  EXPECT_THROW_WITH(make_dataset(o), "--tie-share");
  o = good, o.tie_share = 0.1;
  EXPECT_THROW_WITH(make_dataset(o), "--tie-share", "dpo");
  o = good, o.out.clear();
  EXPECT_THROW_WITH(make_dataset(o), "--out");
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(MakeDataset, RefusesANonEmptyOutputFolderUnlessOverwrite) {
  TempDir dir;
  const fs::path out = dir / "data";
  fs::create_directories(out);
  make_dataset(options("t2i", "folder", 2, out));  // an empty folder is fine
  EXPECT_TRUE(fs::exists(out / "metadata.jsonl"));

  write_file(out / "mine.txt", "keep me");
  auto o = options("t2i", "wds", 2, out);
  EXPECT_THROW_WITH(make_dataset(o), out.string(), "exists and is not empty", "--overwrite");
  EXPECT_EQ(read_file(out / "mine.txt"), "keep me");
  write_file(dir / "file", "x");
  o.out = dir / "file";
  EXPECT_THROW_WITH(make_dataset(o), (dir / "file").string(), "not a folder");

  o.out = out.string() + "/";  // a trailing separator means the same folder
  o.overwrite = true;
  make_dataset(o);
  EXPECT_EQ(names_in(out), (std::vector<std::string>{"00000.tar"}));  // replaced as a whole
  EXPECT_EQ(names_in(dir.path()), (std::vector<std::string>{"data", "file"}));  // no temporary folders left
}

// ---------------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------------

TEST(MakeDatasetCli, WritesTheDatasetAndOneSummaryLine) {
  TempDir dir;
  const fs::path out = dir / "dpo";
  const auto [rc, output] = run_command(cli_path() + " make-dataset --kind dpo --format wds --n 3 --size 32 --seed 7 " +
                                        "--shard-size 2 --tie-share 0.5 --image-format jpg --vary-size --out " +
                                        out.string());
  ASSERT_EQ(rc, 0) << output;
  EXPECT_NE(output.find("wrote 3 dpo examples (wds, 2 files, "), std::string::npos) << output;
  EXPECT_NE(output.find(" bytes) to " + out.string() + " in "), std::string::npos) << output;
  EXPECT_EQ(names_in(out), (std::vector<std::string>{"00000.tar", "00001.tar"}));

  // The same options through the library give the same bytes.
  auto o = options("dpo", "wds", 3, dir / "again");
  o.size = 32, o.shard_size = 2, o.tie_share = 0.5, o.image_format = "jpg", o.vary_size = true;
  make_dataset(o);
  EXPECT_EQ(all_files(out), all_files(dir / "again"));

  const auto [rc2, output2] = run_command(cli_path() + " make-dataset --kind t2i --format folder --n 2 --out " +
                                          out.string() + " --overwrite");
  EXPECT_EQ(rc2, 0) << output2;
  EXPECT_TRUE(fs::exists(out / "metadata.jsonl"));
}

TEST(MakeDatasetCli, BadFlagsAndANonEmptyFolderFail) {
  TempDir dir;
  const fs::path out = dir / "out";
  const std::string base = cli_path() + " make-dataset --format wds --n 2 --out " + out.string();
  const auto [rc, output] = run_command(base + " --kind video");
  EXPECT_EQ(rc, 2) << output;
  EXPECT_NE(output.find("--kind"), std::string::npos) << output;
  EXPECT_NE(output.find("video"), std::string::npos) << output;
  for (const std::string args : {" --kind t2i --size 4", " --kind t2i --n 0", " --kind t2i --image-format gif",
                                 " --kind dpo --tie-share 2", " --kind t2i --shard-size 0", " --kind t2i --bogus"}) {
    const auto [rc2, output2] = run_command(base + args);
    EXPECT_EQ(rc2, 2) << args << "\n" << output2;
  }
  EXPECT_FALSE(fs::exists(out));

  fs::create_directories(out);
  write_file(out / "x", "");
  const auto [rc3, output3] = run_command(base + " --kind t2i");
  EXPECT_EQ(rc3, 1) << output3;
  EXPECT_NE(output3.find("error: " + out.string() + ": exists and is not empty"), std::string::npos) << output3;
  // Options only the library checks are usage errors too (exit code 2), with the flag named.
  const auto [rc4, output4] = run_command(base + " --kind t2i --tie-share 0.5 --overwrite");
  EXPECT_EQ(rc4, 2) << output4;
  EXPECT_NE(output4.find("error: --tie-share: only --kind dpo has ties"), std::string::npos) << output4;
}

}  // namespace
}  // namespace lisadiff::tools
