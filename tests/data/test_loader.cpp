// The data pipeline end to end: datasets written by make-dataset read back through the
// loader in both formats, seeded order, worker independence, resume, bad data.
#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/sources.h"
#include "io/atomic_file.h"
#include "test_util.h"
#include "tools/make_dataset.h"

namespace lisadiff {
namespace {

using namespace data;

std::filesystem::path make(const testing::TempDir& tmp, const std::string& kind, const std::string& format, int n,
                           bool vary_size = false, std::uint64_t seed = 7, std::int64_t shard_size = 4) {
  tools::MakeDatasetOptions o;
  o.kind = kind;
  o.format = format;
  o.n = n;
  o.out = tmp / (kind + "-" + format);
  o.seed = seed;
  o.size = 32;
  o.vary_size = vary_size;
  o.shard_size = shard_size;
  tools::make_dataset(o);
  return o.out;
}

DataOptions options_for(const std::string& kind, const std::filesystem::path& dir, const std::string& format) {
  DataOptions o;
  o.kind = parse_example_kind(kind, "test");
  if (format == "folder") o.train_data_dir = dir.string();
  else o.train_shards = (dir / "{00000..00009}.tar").string();
  o.transform.resolution = 32;
  o.batch_size = 2;
  o.seed = 3;
  return o;
}

// Keys without the folder's "(line N)" suffix and file extension: the example index.
std::string index_of(const std::string& key) {
  return std::filesystem::path(key).filename().string().substr(0, 9);
}

std::vector<Batch> take(DataLoader& loader, int n) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) out.push_back(loader.next());
  return out;
}

::testing::AssertionResult same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "batch counts differ";
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].keys != b[i].keys) return ::testing::AssertionFailure() << "batch " << i << ": keys differ";
    if (a[i].texts != b[i].texts) return ::testing::AssertionFailure() << "batch " << i << ": texts differ";
    if (a[i].end_of_epoch != b[i].end_of_epoch) return ::testing::AssertionFailure() << "batch " << i << ": epoch end";
    for (std::size_t s = 0; s < a[i].images.size(); ++s) {
      auto r = testing::same_tensor(a[i].images[s], b[i].images[s]);
      if (!r) return r << " (batch " << i << ", slot " << s << ")";
    }
    auto r = testing::same_tensor(a[i].labels, b[i].labels);
    if (!r) return r << " (labels of batch " << i << ")";
  }
  return ::testing::AssertionSuccess();
}

std::vector<nlohmann::json> metadata(const std::filesystem::path& dir) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(dir / "metadata.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

torch::Tensor expected_pixels(const std::filesystem::path& file) {
  return to_signed_unit(decode_image(testing::read_file(file), file.string()).permute({2, 0, 1}));
}

TEST(DataLoader, FolderReadsBackWhatMakeDatasetWrote) {
  testing::TempDir tmp;
  for (const std::string kind : {"t2i", "ip2p", "dpo"}) {
    SCOPED_TRACE(kind);
    const auto dir = make(tmp, kind, "folder", 5);
    auto o = options_for(kind, dir, "folder");
    o.shuffle = false;
    o.batch_size = 1;
    if (kind == "ip2p") o.transform.normalize = ImageTransform::Normalize::kMeanStd;
    DataLoader loader(o);
    const auto rows = metadata(dir);
    ASSERT_EQ(rows.size(), 5u);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto b = loader.next();
      ASSERT_EQ(b.size(), 1);
      EXPECT_EQ(b.end_of_epoch, i == rows.size() - 1);
      const auto& row = rows[i];
      if (kind == "t2i") {
        EXPECT_EQ(b.texts[0], row.at("text").get<std::string>());
        EXPECT_TRUE(testing::same_tensor(b.images[0][0], expected_pixels(dir / row.at("file_name").get<std::string>())));
      } else if (kind == "ip2p") {
        EXPECT_EQ(b.texts[0], row.at("edit_prompt").get<std::string>());
        EXPECT_TRUE(testing::same_tensor(b.images[0][0], expected_pixels(dir / row.at("input_image_file_name").get<std::string>())));
        EXPECT_TRUE(testing::same_tensor(b.images[1][0], expected_pixels(dir / row.at("edited_image_file_name").get<std::string>())));
      } else {
        EXPECT_EQ(b.texts[0], row.at("caption").get<std::string>());
        const double label = row.at("label_0").get<double>();
        EXPECT_EQ(b.labels[0].item<float>(), static_cast<float>(label));
        auto first = dir / row.at("jpg_0_file_name").get<std::string>(), second = dir / row.at("jpg_1_file_name").get<std::string>();
        if (label == 0) std::swap(first, second);  // the preferred image comes first
        EXPECT_TRUE(testing::same_tensor(b.images[0][0], expected_pixels(first)));
        EXPECT_TRUE(testing::same_tensor(b.images[1][0], expected_pixels(second)));
      }
    }
    EXPECT_EQ(loader.stats().bad, 0);
  }
}

// Diffusion-DPO's ties (label_0 0.5) are kept, not filtered, with jpg_0 first, as the script
// orders them; label 0 swaps the pair.
TEST(DataLoader, DpoTiesAreKeptInTheirOrderAndLabelZeroSwaps) {
  testing::TempDir tmp;
  tools::MakeDatasetOptions m;
  m.kind = "dpo";
  m.format = "folder";
  m.n = 16;
  m.size = 32;
  m.seed = 7;
  m.tie_share = 0.5;
  m.out = tmp / "ties";
  tools::make_dataset(m);
  auto o = options_for("dpo", m.out, "folder");
  o.shuffle = false;
  o.batch_size = 1;
  DataLoader loader(o);
  int ties = 0, swapped = 0;
  for (const auto& row : metadata(m.out)) {
    const auto b = loader.next();
    const double label = row.at("label_0").get<double>();
    ties += label == 0.5;
    swapped += label == 0;
    const auto first = m.out / row.at(label == 0 ? "jpg_1_file_name" : "jpg_0_file_name").get<std::string>();
    const auto second = m.out / row.at(label == 0 ? "jpg_0_file_name" : "jpg_1_file_name").get<std::string>();
    EXPECT_TRUE(testing::same_tensor(b.images[0][0], expected_pixels(first))) << row.dump();
    EXPECT_TRUE(testing::same_tensor(b.images[1][0], expected_pixels(second))) << row.dump();
    EXPECT_EQ(b.labels[0].item<float>(), static_cast<float>(label));
  }
  EXPECT_GT(ties, 0);
  EXPECT_GT(swapped, 0);
  EXPECT_EQ(loader.stats().bad, 0);
}

TEST(DataLoader, WebdatasetShardsHoldTheSameExamplesAsTheFolder) {
  testing::TempDir tmp;
  for (const std::string kind : {"t2i", "ip2p", "dpo"}) {
    SCOPED_TRACE(kind);
    auto fo = options_for(kind, make(tmp, kind, "folder", 6), "folder");
    auto wo = options_for(kind, make(tmp, kind, "wds", 6), "wds");
    fo.shuffle = wo.shuffle = false;
    DataLoader folder(fo), wds(wo);
    EXPECT_EQ(wds.describe().find("2 webdataset shard(s)") != std::string::npos, true) << wds.describe();
    for (int i = 0; i < 3; ++i) {
      const auto a = folder.next(), b = wds.next();
      ASSERT_EQ(a.size(), b.size());
      for (std::size_t k = 0; k < a.keys.size(); ++k) EXPECT_EQ(index_of(a.keys[k]), b.keys[k]);
      EXPECT_EQ(a.texts, b.texts);
      EXPECT_TRUE(testing::same_tensor(a.labels, b.labels));
      for (std::size_t s = 0; s < a.images.size(); ++s) EXPECT_TRUE(testing::same_tensor(a.images[s], b.images[s]));
    }
  }
}

TEST(DataLoader, SeededShuffleIsReproducibleAndCoversEachEpoch) {
  testing::TempDir tmp;
  for (const std::string format : {"folder", "wds"}) {
    SCOPED_TRACE(format);
    const auto dir = make(tmp, "t2i", format, 10);
    auto o = options_for("t2i", dir, format);
    o.shuffle_buffer = 4;
    DataLoader a(o), b(o);
    const auto ba = take(a, 10), bb = take(b, 10);
    EXPECT_TRUE(same_batches(ba, bb));
    // Epochs of 10 examples in batches of 2: five batches each, every example once.
    for (int epoch = 0; epoch < 2; ++epoch) {
      std::set<std::string> keys;
      for (int i = 0; i < 5; ++i) {
        const auto& batch = ba[static_cast<std::size_t>(epoch * 5 + i)];
        EXPECT_EQ(batch.epoch, epoch);
        EXPECT_EQ(batch.end_of_epoch, i == 4);
        for (const auto& k : batch.keys) keys.insert(index_of(k));
      }
      EXPECT_EQ(keys.size(), 10u);
    }
    std::vector<std::string> order0, order1;
    for (int i = 0; i < 5; ++i) order0.insert(order0.end(), ba[static_cast<std::size_t>(i)].keys.begin(), ba[static_cast<std::size_t>(i)].keys.end());
    for (int i = 5; i < 10; ++i) order1.insert(order1.end(), ba[static_cast<std::size_t>(i)].keys.begin(), ba[static_cast<std::size_t>(i)].keys.end());
    EXPECT_NE(order0, order1);  // each epoch reshuffles
    o.seed = 4;
    DataLoader c(o);
    EXPECT_FALSE(same_batches(take(c, 5), std::vector<Batch>(ba.begin(), ba.begin() + 5)));
  }
}

TEST(DataLoader, WorkersDoNotChangeTheBatches) {
  testing::TempDir tmp;
  for (const std::string format : {"folder", "wds"}) {
    SCOPED_TRACE(format);
    const auto dir = make(tmp, "dpo", format, 9, /*vary_size=*/true);
    auto o = options_for("dpo", dir, format);
    o.transform.crop = ImageTransform::Crop::kRandom;
    o.transform.random_flip = true;
    o.shuffle_buffer = 3;
    std::vector<std::vector<Batch>> runs;
    for (int workers : {0, 1, 2}) {
      o.num_workers = workers;
      DataLoader loader(o);
      runs.push_back(take(loader, 12));
    }
    EXPECT_TRUE(same_batches(runs[0], runs[1]));
    EXPECT_TRUE(same_batches(runs[0], runs[2]));
  }
}

TEST(DataLoader, ResumeFromASavedPositionGivesTheSameFollowingBatches) {
  testing::TempDir tmp;
  for (const std::string format : {"folder", "wds"}) {
    SCOPED_TRACE(format);
    const auto dir = make(tmp, "ip2p", format, 7, true);
    auto o = options_for("ip2p", dir, format);
    o.transform.random_flip = true;
    o.num_workers = 2;
    o.shuffle_buffer = 5;
    DataLoader full(o);
    const auto all = take(full, 9);
    DataLoader first(o);
    take(first, 4);
    const auto saved = first.state().dump();
    o.num_workers = 1;  // the worker count is not part of the order
    DataLoader resumed(o);
    resumed.load_state(nlohmann::json::parse(saved));
    EXPECT_TRUE(same_batches(take(resumed, 5), std::vector<Batch>(all.begin() + 4, all.end())));
    EXPECT_EQ(resumed.stats().records, full.stats().records);
    EXPECT_THROW_WITH(resumed.load_state(nlohmann::json::parse(saved)), "before the first batch");
  }
}

// A count in the saved state that is not a whole number >= 0 (a float, one beyond int64, a
// negative one) is an error naming it, never a silently converted position.
TEST(DataLoader, SavedCountsMustBeWholeNumbers) {
  testing::TempDir tmp;
  const auto dir = make(tmp, "t2i", "folder", 6);
  const auto o = options_for("t2i", dir, "folder");
  DataLoader first(o);
  take(first, 2);
  const auto saved = first.state();
  for (const auto& [key, value, shown] :
       std::vector<std::tuple<const char*, nlohmann::json, const char*>>{
           {"records", nlohmann::json::parse("200000000000000000000"), "2e+20"},
           {"records", 2.5, "2.5"},
           {"examples", -1, "-1"},
           {"good_in_epoch", nlohmann::json::parse("18446744073709551615"), "18446744073709551615"}}) {
    auto bad = saved;
    bad[key] = value;
    DataLoader resumed(o);
    EXPECT_THROW_WITH(resumed.load_state(bad), std::string("data loader state: ") + key + " is " + shown,
                      "not a whole number >= 0");
  }
  DataLoader resumed(o);
  resumed.load_state(saved);
}

TEST(DataLoader, BadSamplesAreSkippedNamedAndCounted) {
  testing::TempDir tmp;
  const auto dir = make(tmp, "t2i", "folder", 12);
  auto rows = metadata(dir);
  // A corrupt image, a truncated one, a missing one, an empty caption, a missing caption.
  testing::write_file(dir / rows[1].at("file_name").get<std::string>(), "garbage, not a PNG");
  const auto f2 = dir / rows[2].at("file_name").get<std::string>();
  const auto png = testing::read_file(f2);
  testing::write_file(f2, png.substr(0, png.size() / 2));
  std::filesystem::remove(dir / rows[3].at("file_name").get<std::string>());
  rows[4]["text"] = "  ";
  rows[5].erase("text");
  std::string jsonl;
  for (const auto& r : rows) jsonl += r.dump() + "\n";
  jsonl += "{not json\n";
  testing::write_file(dir / "metadata.jsonl", jsonl);
  auto o = options_for("t2i", dir, "folder");
  o.shuffle = false;
  o.batch_size = 3;
  o.max_bad_share = 1;
  testing::CapturedLog log;
  DataLoader loader(o);
  std::vector<std::string> keys;
  for (int i = 0; i < 3; ++i) {
    const auto b = loader.next();
    keys.insert(keys.end(), b.keys.begin(), b.keys.end());
  }
  EXPECT_EQ(loader.stats().bad, 6);
  EXPECT_EQ(keys.size(), 7u);  // 13 records, 6 bad: batches of 3, 3 and the epoch's last 1
  const auto text = log.text();
  for (const std::string expected : {"000000001.png (line 2)", "000000002.png (line 3)", "000000003.png (line 4)",
                                     "empty caption", "missing caption column 'text'", "line 13", "not valid JSON",
                                     "corrupt or truncated PNG", "cannot read", "metadata.jsonl"}) {
    EXPECT_NE(text.find(expected), std::string::npos) << expected << "\n" << text;
  }
  // Above the allowed share, the loader stops with an error naming the last bad sample.
  o.max_bad_share = 0.25;
  o.min_samples_for_bad_share = 4;
  DataLoader strict(o);
  EXPECT_THROW_WITH(take(strict, 3), "samples are bad, more than max_bad_share", "line");
}

TEST(DataLoader, TruncatedAndUnreadableShardsAreSkippedWithAWarning) {
  testing::TempDir tmp;
  const auto dir = make(tmp, "t2i", "wds", 8);  // two shards of 4
  const auto shard = dir / "00001.tar";
  const auto bytes = testing::read_file(shard);
  testing::write_file(shard, bytes.substr(0, bytes.size() / 2 + 100));
  auto o = options_for("t2i", dir, "wds");
  o.train_shards = (dir / "{00000..00002}.tar").string();  // 00002.tar does not exist
  o.shuffle = false;
  o.max_bad_share = 1;
  testing::CapturedLog log;
  DataLoader loader(o);
  std::int64_t examples = 0;
  for (int i = 0; i < 12 && loader.stats().bad < 2; ++i) examples += loader.next().size();
  EXPECT_GE(loader.stats().bad, 2);  // once per epoch
  EXPECT_GE(examples, 8);
  EXPECT_NE(loader.describe().find("2 webdataset shard(s)"), std::string::npos) << loader.describe();
  EXPECT_NE(log.text().find("00001.tar"), std::string::npos) << log.text();
  EXPECT_NE(log.text().find("truncated or unreadable tar"), std::string::npos) << log.text();
  EXPECT_NE(log.text().find("00002.tar"), std::string::npos) << log.text();
}

TEST(DataLoader, AnEpochWithoutUsableSamplesIsAnError) {
  testing::TempDir tmp;
  const auto dir = make(tmp, "t2i", "folder", 3);
  for (const auto& row : metadata(dir)) testing::write_file(dir / row.at("file_name").get<std::string>(), "x");
  auto o = options_for("t2i", dir, "folder");
  o.max_bad_share = 1;
  testing::CapturedLog log;
  DataLoader loader(o);
  EXPECT_THROW_WITH(loader.next(), "has no usable sample");
}

TEST(DataLoader, PipeShardsFiltersAndDistributedSplits) {
  testing::TempDir tmp;
  const auto dir = make(tmp, "t2i", "wds", 8);
  auto o = options_for("t2i", dir, "wds");
  o.shuffle = false;
  auto p = o;
  p.train_shards = "pipe:cat " + (dir / "00000.tar").string() + "::pipe:cat " + (dir / "00001.tar").string();
  DataLoader files(o), pipes(p);
  EXPECT_TRUE(same_batches(take(files, 4), take(pipes, 4)));
  // The aesthetic filter drops samples whose .json says so (counted, not bad).
  auto f = o;
  f.filters.min_aesthetic = 1e9;
  f.filters.max_pwatermark = -1;
  {
    testing::CapturedLog log;
    DataLoader none(f);
    EXPECT_THROW_WITH(none.next(), "no usable sample");
  }
  // Resampled shards are endless: a stream where nothing passes ends in an error, not a hang.
  {
    auto endless = f;
    endless.resample_shards = true;
    endless.max_unusable_in_a_row = 50;
    DataLoader none(endless);
    EXPECT_THROW_WITH(none.next(), "51 samples in a row", "bad or filtered out", "51 filtered");
  }
  // Two processes split a folder's epoch; together they see every example, and each reads
  // as many (accelerate's even_batches): of 7, rank 1's fourth is the epoch's first again, so
  // both have 2 batches (3 + 1) and end their epochs together.
  const auto folder = make(tmp, "t2i", "folder", 7);
  auto r = options_for("t2i", folder, "folder");
  r.batch_size = 3;
  std::set<std::string> seen;
  std::vector<std::string> first_keys;
  std::int64_t total = 0;
  for (int rank = 0; rank < 2; ++rank) {
    r.rank = rank;
    r.world_size = 2;
    DataLoader loader(r);
    EXPECT_EQ(loader.batches_per_epoch(), 2);
    for (int i = 0; i < 2; ++i) {
      const auto b = loader.next();
      EXPECT_EQ(b.size(), i == 0 ? 3 : 1);
      EXPECT_EQ(b.end_of_epoch, i == 1);
      total += b.size();
      for (const auto& k : b.keys) seen.insert(k);
      first_keys.push_back(b.keys.front());
    }
  }
  EXPECT_EQ(total, 8);
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_EQ(first_keys[3], first_keys[0]);  // rank 1's wrapped example is rank 0's first
}

TEST(DataLoader, MaxTrainSamplesAndDropLast) {
  testing::TempDir tmp;
  const auto dir = make(tmp, "t2i", "folder", 9);
  auto o = options_for("t2i", dir, "folder");
  o.max_train_samples = 5;
  o.drop_last = true;
  DataLoader loader(o);
  EXPECT_EQ(loader.batches_per_epoch(), 2);
  std::set<std::string> keys;
  for (int i = 0; i < 6; ++i) {
    const auto b = loader.next();
    EXPECT_EQ(b.size(), 2);
    for (const auto& k : b.keys) keys.insert(k);
  }
  EXPECT_EQ(keys.size(), 5u);  // one fixed subset of 5, reshuffled each epoch
  EXPECT_EQ(loader.stats().dropped, 2);  // the third epoch's leftover is dropped only when reached
}

TEST(DataOptions, ConfigKeysAndErrors) {
  const auto read = [](config::Json j, ExampleKind kind) {
    DataOptions o;
    o.kind = kind;
    config::FieldReader f(j, "cfg.json");
    o.read(f);
    return o;
  };
  auto dpo = read({{"train_data_dir", "/d"}, {"resolution", 256}, {"random_crop", true}, {"no_hflip", false},
                   {"dataloader_num_workers", 2}, {"train_batch_size", 4}, {"seed", 9}},
                  ExampleKind::kDpo);
  EXPECT_EQ(dpo.transform.crop, ImageTransform::Crop::kRandom);
  EXPECT_TRUE(dpo.transform.random_flip);
  EXPECT_EQ(dpo.num_workers, 2);
  EXPECT_EQ(dpo.seed, 9u);
  auto ip2p = read({{"train_data_dir", "/d"}, {"original_image_column", "original_image"}, {"random_flip", true}},
                   ExampleKind::kIp2p);
  EXPECT_EQ(ip2p.columns.original_image, "original_image");
  EXPECT_TRUE(ip2p.transform.random_flip);
  EXPECT_THROW_WITH(read({{"train_data_dir", "/d"}, {"resolution", 100}}, ExampleKind::kT2i), "cfg.json", "resolution");
  EXPECT_THROW_WITH(read({{"resolution", 64}}, ExampleKind::kT2i), "cfg.json", "exactly one must be set");
  EXPECT_THROW_WITH(read({{"train_data_dir", "/d"}, {"interpolation_type", "lanczos"}}, ExampleKind::kT2i),
                    "interpolation_type", "lanczos");
  EXPECT_THROW_WITH(read({{"train_data_dir", "/d"}, {"dataloader_num_workers", -1}}, ExampleKind::kT2i),
                    "dataloader_num_workers");
  DataOptions missing;
  missing.train_data_dir = "/nonexistent/folder";
  EXPECT_THROW_WITH(DataLoader{missing}, "/nonexistent/folder", "not a folder");
  DataOptions no_shards;
  no_shards.train_shards = "/nonexistent/{000..003}.tar";
  EXPECT_THROW_WITH(DataLoader{no_shards}, "none of the 4 shards exists", "/nonexistent/000.tar");
}

TEST(DataOptions, RecipePresetsFollowTheScripts) {
  const auto lcm = DataOptions::for_recipe(ExampleKind::kT2i);
  EXPECT_EQ(lcm.transform.resolution, 512);
  EXPECT_EQ(lcm.transform.resize, ImageTransform::Resize::kShorterSide);
  EXPECT_EQ(lcm.transform.crop, ImageTransform::Crop::kRandom);
  EXPECT_FALSE(lcm.transform.random_flip);
  EXPECT_TRUE(lcm.resample_shards);
  EXPECT_TRUE(lcm.drop_last);
  const auto ip2p = DataOptions::for_recipe(ExampleKind::kIp2p);
  EXPECT_EQ(ip2p.transform.resolution, 256);
  EXPECT_EQ(ip2p.transform.resize, ImageTransform::Resize::kExact);
  EXPECT_EQ(ip2p.transform.interpolation, Interpolation::kBicubic);
  EXPECT_EQ(ip2p.transform.normalize, ImageTransform::Normalize::kIp2p);
  EXPECT_TRUE(ip2p.shared_pair_draws);
  const auto dpo = DataOptions::for_recipe(ExampleKind::kDpo);
  EXPECT_EQ(dpo.transform.crop, ImageTransform::Crop::kCenter);
  EXPECT_TRUE(dpo.transform.random_flip);
  EXPECT_EQ(dpo.transform.interpolation, Interpolation::kBilinear);
  EXPECT_FALSE(dpo.drop_last);
}

TEST(DataLoader, IpPairsShareTheirFlipAndDpoImagesDrawIndependently) {
  testing::TempDir tmp;
  // ip2p with a flip: the edited image must be flipped exactly when the original is.
  const auto ip = make(tmp, "ip2p", "folder", 12);
  auto o = DataOptions::for_recipe(ExampleKind::kIp2p);
  o.train_data_dir = ip.string();
  o.transform.resolution = 32;
  o.transform.random_flip = true;
  o.shuffle = false;
  o.batch_size = 1;
  DataLoader loader(o);
  const auto rows = metadata(ip);
  int flipped = 0;
  ImageTransform plain = o.transform;
  plain.random_flip = false;
  for (const auto& row : rows) {
    const auto b = loader.next();
    TransformDraws d(0);
    const auto original = plain(decode_image(testing::read_file(ip / row.at("input_image_file_name").get<std::string>()), "a"), d);
    const auto edited = plain(decode_image(testing::read_file(ip / row.at("edited_image_file_name").get<std::string>()), "b"), d);
    const bool a = !testing::same_tensor(b.images[0][0], original), e = !testing::same_tensor(b.images[1][0], edited);
    EXPECT_EQ(a, e);
    if (a) {
      EXPECT_TRUE(testing::same_tensor(b.images[0][0], hflip(original)));
      EXPECT_TRUE(testing::same_tensor(b.images[1][0], hflip(edited)));
    }
    flipped += a;
  }
  EXPECT_GT(flipped, 0);
  EXPECT_LT(flipped, 12);
}

TEST(Codecs, GuardsAgainstBombsAndToleratesHarmlessJpegWarnings) {
  // A PNG header announcing 100000 x 100000 pixels is refused before decoding.
  auto png = encode_png(torch::zeros({1, 1, 3}, torch::kUInt8));
  const char big[4] = {0x00, 0x01, static_cast<char>(0x86), static_cast<char>(0xA0)};  // 100000
  png.replace(16, 4, big, 4);
  png.replace(20, 4, big, 4);
  EXPECT_THROW_WITH(decode_image(png, "bomb.png"), "bomb.png", "100000x100000", "exceeds");
  // An image so thin that its resize would be huge is refused by the transform.
  ImageTransform t;
  t.resolution = 32;
  TransformDraws d(1);
  EXPECT_THROW_WITH(t(torch::zeros({600, 1, 3}, torch::kUInt8), d), "1x600", "aspect ratio");
  // Extraneous bytes before a marker: libjpeg warns, PIL and lisadiff decode anyway.
  const auto ramp = torch::arange(16 * 16 * 3, torch::kInt64).reshape({16, 16, 3}).remainder(251).to(torch::kUInt8);
  const auto jpeg = encode_jpeg(ramp, 90);
  auto noisy = jpeg;
  noisy.insert(noisy.size() - 2, "\x01\x02\x03");
  EXPECT_TRUE(testing::same_tensor(decode_image(noisy, "noisy.jpg"), decode_image(jpeg, "clean.jpg")));
}

TEST(Shards, BraceExpansion) {
  EXPECT_EQ(expand_braces("a/{00000..00002}.tar"),
            (std::vector<std::string>{"a/00000.tar", "a/00001.tar", "a/00002.tar"}));
  EXPECT_EQ(expand_braces("{x,y}-{8..10}"), (std::vector<std::string>{"x-8", "x-9", "x-10", "y-8", "y-9", "y-10"}));
  EXPECT_EQ(expand_braces("a.tar::b.tar"), (std::vector<std::string>{"a.tar", "b.tar"}));
  EXPECT_THROW_WITH(expand_braces("a{1..2.tar"), "without '}'");
  EXPECT_THROW_WITH(expand_braces("a{5..2}.tar"), "backwards");
  EXPECT_EQ(seeded_permutation(5, 1), seeded_permutation(5, 1));
  EXPECT_NE(seeded_permutation(50, 1), seeded_permutation(50, 2));
}

}  // namespace
}  // namespace lisadiff

namespace lisadiff {
namespace {

using namespace data;

// train_text_to_image.py's data: Pillow's resize with --image_interpolation_mode (lanczos by
// default), random crop unless --center_crop, flip only with --random_flip; the LCM profile
// still ignores those flags.
TEST(DataOptions, TextToImageProfile) {
  const auto read = [](config::Json j, DataOptions o) {
    config::FieldReader f(j, "cfg.json");
    o.read(f);
    return o;
  };
  const auto t2i = read({{"train_data_dir", "/d"}}, DataOptions::for_text_to_image());
  ASSERT_TRUE(t2i.transform.pil_filter.has_value());
  EXPECT_EQ(*t2i.transform.pil_filter, PilFilter::kLanczos);
  EXPECT_EQ(t2i.transform.crop, ImageTransform::Crop::kRandom);
  EXPECT_FALSE(t2i.transform.random_flip);
  EXPECT_FALSE(t2i.drop_last);
  EXPECT_FALSE(t2i.resample_shards);
  const auto set = read({{"train_data_dir", "/d"}, {"center_crop", true}, {"random_flip", true},
                         {"image_interpolation_mode", "bicubic"}},
                        DataOptions::for_text_to_image());
  EXPECT_EQ(*set.transform.pil_filter, PilFilter::kBicubic);
  EXPECT_EQ(set.transform.crop, ImageTransform::Crop::kCenter);
  EXPECT_TRUE(set.transform.random_flip);
  EXPECT_NE(set.transform.summary().find("PIL bicubic"), std::string::npos) << set.transform.summary();
  EXPECT_THROW_WITH(read({{"train_data_dir", "/d"}, {"image_interpolation_mode", "cubic"}}, DataOptions::for_text_to_image()),
                    "cfg.json: image_interpolation_mode", "unknown interpolation 'cubic'");
  const auto lcm = read({{"train_data_dir", "/d"}, {"center_crop", true}, {"random_flip", true}},
                        DataOptions::for_recipe(ExampleKind::kT2i));
  EXPECT_FALSE(lcm.transform.pil_filter.has_value());
  EXPECT_EQ(lcm.transform.crop, ImageTransform::Crop::kRandom);
  EXPECT_FALSE(lcm.transform.random_flip);
}

// The loader with the profile: each image is the decoded file resized by Pillow's lanczos
// (shorter side), center-cropped and mapped to [-1, 1].
TEST(DataLoader, TextToImageProfileResizesWithPillowsLanczos) {
  testing::TempDir tmp;
  const auto dir = make(tmp, "t2i", "folder", 4, /*vary_size=*/true);
  auto o = DataOptions::for_text_to_image();
  o.train_data_dir = dir.string();
  o.transform.resolution = 24;
  o.transform.crop = ImageTransform::Crop::kCenter;
  o.batch_size = 1;
  o.shuffle = false;
  DataLoader loader(o);
  const auto rows = metadata(dir);
  for (int i = 0; i < 4; ++i) {
    const auto b = loader.next();
    const auto file = dir / rows[static_cast<std::size_t>(i)].at("file_name").get<std::string>();
    const auto hwc = decode_image(io::read_file(file), file.string());
    const auto [h, w] = shorter_side_size(hwc.size(0), hwc.size(1), 24);
    const auto expected =
        to_signed_unit(center_crop(pil_resize(hwc.permute({2, 0, 1}), h, w, PilFilter::kLanczos), 24, 24));
    EXPECT_TRUE(testing::same_tensor(b.images[0][0], expected)) << file;
  }
}

}  // namespace
}  // namespace lisadiff
