// `lisadiff score`: make-dataset's own images score (near) 100 % in every kind and format,
// noise scores at chance level, prompts are read word by word, and bad folders fail with the
// file named. `lisadiff eval-loss`: seeded draws. `lisadiff train-vae`: the reconstruction error falls, scaling_factor is set from
// the latents, the rest of the pipeline is copied, and bad input writes nothing.
#include <random>

#include <nlohmann/json.hpp>

#include "config/json_fields.h"
#include "data/image.h"
#include "models/vae.h"
#include "test_util.h"
#include "tools/init_pipeline.h"
#include "tools/eval_loss.h"
#include "tools/make_dataset.h"
#include "tools/score.h"
#include "tools/train_vae.h"

namespace lisadiff::tools {
namespace {

namespace fs = std::filesystem;
using lisadiff::testing::cli_path;
using lisadiff::testing::read_file;
using lisadiff::testing::run_command;
using lisadiff::testing::TempDir;

// testing::write_file, with the folders made first.
void write_file(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  lisadiff::testing::write_file(path, bytes);
}

MakeDatasetSummary make(const std::string& kind, const std::string& format, std::int64_t n, const fs::path& out,
                        int size = 48, const std::string& image_format = "png", bool vary = false) {
  MakeDatasetOptions o;
  o.kind = kind, o.format = format, o.n = n, o.out = out, o.seed = 3, o.size = size;
  o.image_format = image_format, o.vary_size = vary;
  return make_dataset(o);
}

TEST(ScorePrompt, ReadsColourShapeAndBackgroundWords) {
  auto w = parse_prompt("a red circle on a blue background");
  EXPECT_EQ(w.color, "red");
  EXPECT_EQ(w.shape, "circle");
  EXPECT_EQ(w.background, "blue");
  w = parse_prompt("make the triangle green");
  EXPECT_EQ(w.color, "green");
  EXPECT_EQ(w.shape, "triangle");
  EXPECT_EQ(w.background, "");
  w = parse_prompt("A Yellow SQUARE, on a white background.");
  EXPECT_EQ(w.color, "yellow");
  EXPECT_EQ(w.shape, "square");
  EXPECT_EQ(w.background, "white");
  w = parse_prompt("a photo of a cat");
  EXPECT_EQ(w.color + w.shape + w.background, "");
}

TEST(Score, MakeDatasetImagesScoreFullMarksInEveryKind) {
  TempDir dir;
  make("t2i", "folder", 120, dir / "t2i");
  auto s = score_folder(dir / "t2i");
  EXPECT_EQ(s.images.size(), 120u);
  EXPECT_EQ(s.color.judged, 120);
  EXPECT_EQ(s.color.hits, 120);
  EXPECT_EQ(s.shape.hits, 120);
  EXPECT_EQ(s.background.hits, 120);
  EXPECT_EQ(s.color_and_shape.hits, 120);

  // Small JPEGs of varied sizes (the shapes model's 32 px scale, compression artefacts).
  make("t2i", "folder", 120, dir / "small", 32, "jpg", true);
  s = score_folder(dir / "small");
  EXPECT_GE(s.color.rate(), 0.98);
  EXPECT_GE(s.shape.rate(), 0.95);
  EXPECT_GE(s.background.rate(), 0.98);

  make("ip2p", "folder", 60, dir / "ip2p");  // the edited image against the edit prompt
  s = score_folder(dir / "ip2p");
  EXPECT_EQ(s.color.hits, 60);
  EXPECT_EQ(s.shape.hits, 60);
  EXPECT_EQ(s.background.judged, 0);

  make("dpo", "folder", 60, dir / "dpo");  // the preferred image against the caption
  s = score_folder(dir / "dpo");
  EXPECT_EQ(s.images.size(), 60u);
  EXPECT_EQ(s.color_and_shape.hits, 60);
}

TEST(Score, NoiseAndBlankImagesScoreAtChance) {
  TempDir dir;
  make("t2i", "folder", 300, dir / "t2i", 32);
  // A generate-style folder: images.jsonl with file and prompt, the images uniform noise.
  std::mt19937 rng(5);
  std::string index;
  int i = 0;
  for (const auto& line : testing::read_jsonl(dir / "t2i" / "metadata.jsonl")) {
    std::vector<std::uint8_t> pixels(32 * 32 * 3);
    for (auto& p : pixels) p = static_cast<std::uint8_t>(rng() & 255);
    const std::string file = std::to_string(i++) + ".png";
    write_file(dir / "noise" / file, data::encode_png(pixels.data(), 32, 32));
    index += nlohmann::json{{"file", file}, {"prompt", line["text"]}}.dump() + "\n";
  }
  write_file(dir / "noise" / "images.jsonl", index);
  const auto s = score_folder(dir / "noise");
  EXPECT_EQ(s.images.size(), 300u);
  // Chance: 1 of 8 colours, 1 of 3 shapes; 300 images put chance +- 3 standard deviations
  // at 0.07-0.18 and 0.25-0.42.
  EXPECT_LE(s.color.rate(), 0.25) << s.color.hits;
  EXPECT_LE(s.shape.rate(), 0.5) << s.shape.hits;
  EXPECT_LE(s.color_and_shape.rate(), 0.15);

  // A blank image shows no shape: colour and shape are misses.
  std::vector<std::uint8_t> gray(16 * 16 * 3, 128);
  write_file(dir / "blank" / "0.png", data::encode_png(gray.data(), 16, 16));
  write_file(dir / "blank" / "images.jsonl", R"({"file": "0.png", "prompt": "a red circle on a blue background"})");
  const auto b = score_folder(dir / "blank");
  EXPECT_EQ(b.images[0].seen.shape, "");
  EXPECT_EQ(b.color.hits + b.shape.hits, 0);
  EXPECT_EQ(b.color.judged, 1);
}

TEST(Score, AnEditMustKeepTheSourceBackground) {
  TempDir dir;
  make("ip2p", "folder", 2, dir / "ip2p");
  const auto lines = testing::read_jsonl(dir / "ip2p" / "metadata.jsonl");
  const std::string prompt = lines[0]["edit_prompt"];
  const fs::path source = dir / "ip2p" / lines[0]["input_image_file_name"].get<std::string>();
  const fs::path edited = dir / "ip2p" / lines[0]["edited_image_file_name"].get<std::string>();
  fs::create_directories(dir / "gen");
  fs::copy_file(edited, dir / "gen" / "0.png");
  fs::copy_file(source, dir / "gen" / "1.png");  // the source itself: the edit was not made
  write_file(dir / "gen" / "images.jsonl",
             nlohmann::json{{"file", "0.png"}, {"prompt", prompt}, {"image", source.string()}}.dump() + "\n" +
                 nlohmann::json{{"file", "1.png"}, {"prompt", prompt}, {"image", source.string()}}.dump() + "\n");
  const auto s = score_folder(dir / "gen");
  EXPECT_EQ(s.background.judged, 2);
  EXPECT_EQ(s.background.hits, 2);
  EXPECT_EQ(s.color.hits, 1);  // only the edited image has the asked colour
  EXPECT_EQ(s.images[0].wants.background, s.images[0].seen.background);
}

TEST(Score, BadFoldersNameTheFile) {
  TempDir dir;
  fs::create_directories(dir / "empty");
  EXPECT_THROW_WITH(score_folder(dir / "empty"), (dir / "empty").string(), "images.jsonl", "metadata.jsonl");
  write_file(dir / "bad" / "images.jsonl", "{\"file\": \"0.png\", \"prompt\": \"a red circle\"}\n{oops\n");
  EXPECT_THROW_WITH(score_folder(dir / "bad"), "0.png");  // the missing image comes first
  write_file(dir / "bad2" / "images.jsonl", "\n{oops\n");
  EXPECT_THROW_WITH(score_folder(dir / "bad2"), "images.jsonl:2", "not a JSON object");
  write_file(dir / "corrupt" / "0.png", "\x89PNG\r\n\x1a\nnot really");
  write_file(dir / "corrupt" / "images.jsonl", R"({"file": "0.png", "prompt": "a red circle"})");
  EXPECT_THROW_WITH(score_folder(dir / "corrupt"), "0.png");
  write_file(dir / "none" / "images.jsonl", "\n");
  EXPECT_THROW_WITH(score_folder(dir / "none"), "no image to score");
}

TEST(ScoreCli, PrintsTheRatesAndWritesJson) {
  TempDir dir;
  make("t2i", "folder", 20, dir / "t2i");
  const auto [rc, out] = run_command(cli_path() + " score " + (dir / "t2i").string() + " --json " +
                                     (dir / "s.json").string() + " --per-image");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("colour             100.0 %  (20/20)"), std::string::npos) << out;
  const auto json = testing::read_json(dir / "s.json");
  EXPECT_EQ(json["images"], 20);
  EXPECT_EQ(json["shape"]["hits"], 20);
  EXPECT_EQ(json["per_image"].size(), 20u);
  const auto [rc2, out2] = run_command(cli_path() + " score " + (dir / "missing").string());
  EXPECT_EQ(rc2, 1) << out2;
  EXPECT_NE(out2.find("error: " + (dir / "missing").string()), std::string::npos) << out2;
  const auto [rc3, out3] = run_command(cli_path() + " score");
  EXPECT_EQ(rc3, 2) << out3;
}

TEST(TrainVae, LearnsToReconstructAndSetsTheScalingFactor) {
  TempDir dir;
  make("t2i", "folder", 64, dir / "data", 32);
  InitPipelineOptions init;
  init.preset = "shapes", init.out = dir / "base";
  init_pipeline(init);
  TrainVaeOptions o;
  o.pipeline = dir / "base", o.train_data_dir = (dir / "data").string(), o.out = dir / "trained";
  o.batch_size = 8, o.max_train_steps = 40, o.log_every = 20;
  const auto s = train_vae(o);
  EXPECT_LT(s.last_loss, 0.5 * s.first_loss) << s.first_loss << " -> " << s.last_loss;
  EXPECT_GT(s.scaling_factor, 0);
  // The pipeline's other parts are copied byte for byte; vae/ is the trained one.
  for (const char* f : {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json",
                        "scheduler/scheduler_config.json", "text_encoder/model.safetensors"}) {
    EXPECT_EQ(read_file(dir / "trained" / f), read_file(dir / "base" / f)) << f;
  }
  EXPECT_NE(read_file(dir / "trained/vae/diffusion_pytorch_model.safetensors"),
            read_file(dir / "base/vae/diffusion_pytorch_model.safetensors"));
  const auto config = testing::read_json(dir / "trained/vae/config.json");
  EXPECT_NEAR(config["scaling_factor"].get<double>(), s.scaling_factor, 1e-12);
  EXPECT_EQ(config["_class_name"], "AutoencoderKL");
  auto vae = models::load_vae(dir / "trained" / "vae");  // loads, every key present
  EXPECT_NEAR(vae->config.scaling_factor, s.scaling_factor, 1e-12);
  EXPECT_FALSE(fs::exists(dir / "base" / "vae" / "x"));

  // Bad input: nothing written.
  auto bad = o;
  bad.out = dir / "bad";
  bad.max_train_steps = 0;
  EXPECT_THROW_WITH(train_vae(bad), "--max_train_steps");
  bad = o, bad.out = dir / "bad", bad.train_data_dir.clear();
  EXPECT_THROW_WITH(train_vae(bad), "--train_data_dir");
  bad = o, bad.out = dir / "bad", bad.pipeline = dir / "data";
  EXPECT_THROW_WITH(train_vae(bad), (dir / "data").string(), "vae/");
  bad = o;  // exists already
  EXPECT_THROW_WITH(train_vae(bad), (dir / "trained").string(), "--overwrite");
  EXPECT_FALSE(fs::exists(dir / "bad"));
  const auto [rc, out] = run_command(cli_path() + " train-vae " + (dir / "base").string() + " --out " +
                                     (dir / "bad").string() + " --train_data_dir " + (dir / "data").string() +
                                     " --resolution 12");
  EXPECT_EQ(rc, 2) << out;  // a flag's value: a usage error
  EXPECT_NE(out.find("--resolution"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "bad"));
}

// eval-loss: the draws are fixed by the seed (not by the batch size), and bad input is named.
TEST(EvalLoss, SeededDrawsIndependentOfTheBatch) {
  TempDir dir;
  make("t2i", "folder", 12, dir / "data", 32);
  InitPipelineOptions init;
  init.preset = "shapes", init.out = dir / "base";
  init_pipeline(init);
  EvalLossOptions o;
  o.pipeline = dir / "base", o.train_data_dir = (dir / "data").string(), o.repeats = 2;
  o.batch_size = 4;
  const auto a = eval_loss(o);
  EXPECT_EQ(a.images, 12);
  EXPECT_EQ(a.draws, 24);
  EXPECT_GT(a.loss, 0.1);  // random weights: about the noise's variance
  o.batch_size = 5;  // 5 + 5 + 2: the same draws per image
  // Other batch shapes take other convolution blockings: float32 rounding, about 1e-4 here,
  // where another noise or timestep draw would move the mean of 24 draws by percents.
  EXPECT_NEAR(eval_loss(o).loss, a.loss, 1e-3 * a.loss);
  o.seed = 1;
  EXPECT_NE(eval_loss(o).loss, a.loss);
  o.seed = 0, o.max_samples = 5;
  EXPECT_EQ(eval_loss(o).images, 5);

  // Bad input.
  auto bad = o;
  bad.train_data_dir = (dir / "missing").string();
  EXPECT_THROW_WITH(eval_loss(bad), "missing");
  bad = o, bad.repeats = 0;
  EXPECT_THROW_WITH(eval_loss(bad), "--repeats");
  bad = o, bad.unet = dir / "data";
  EXPECT_THROW_WITH(eval_loss(bad), (dir / "data").string());
  const auto [rc, out] = run_command(cli_path() + " eval-loss " + (dir / "base").string() + " --data " +
                                     (dir / "data").string() + " --repeats 1 --json " + (dir / "l.json").string());
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("eval-loss: "), std::string::npos) << out;
  EXPECT_GT(testing::read_json(dir / "l.json")["loss"].get<double>(), 0);
  const auto [rc2, out2] = run_command(cli_path() + " eval-loss " + (dir / "base").string());
  EXPECT_EQ(rc2, 2) << out2;  // --data is required
}

}  // namespace
}  // namespace lisadiff::tools
