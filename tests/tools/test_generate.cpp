// lisadiff generate: one PNG per image with its parameters in text chunks, images.jsonl, and
// bad input refused with one line and nothing written.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <tuple>

#include "io/png.h"
#include "test_util.h"
#include "train/metrics.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;

std::string cli() { return testing::cli_path(); }

TEST(Generate, WritesPngsWithTheirParametersAndImagesJsonl) {
  testing::TempDir tmp;
  const auto out = tmp / "out";
  const auto [rc, log] = testing::run_command(cli() + " generate " + (fixtures_dir() / "pipelines/micro-sd").string() +
                                              " --prompt 'a red circle' --prompt 'a green square' --images_per_prompt 2"
                                              " --steps 3 --seed 5 --negative_prompt blurry --out " + out.string() +
                                              " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  std::ifstream in(out / "images.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_TRUE(fs::exists(out / "grid.png"));
  EXPECT_EQ(lines[2].at("prompt"), "a green square");
  EXPECT_EQ(lines[3].at("seed"), 8);  // seed + i
  const auto text = io::read_png_text(testing::read_file(out / "0003.png"), "0003.png");
  std::map<std::string, std::string> chunks(text.begin(), text.end());
  EXPECT_EQ(chunks.at("prompt"), "a green square");
  EXPECT_EQ(chunks.at("negative_prompt"), "blurry");
  EXPECT_EQ(chunks.at("seed"), "8");
  EXPECT_EQ(chunks.at("steps"), "3");
  EXPECT_EQ(chunks.at("scheduler"), "DDIMScheduler");
  EXPECT_NE(chunks.at("parameters").find("Seed: 8"), std::string::npos) << chunks.at("parameters");
  // The same seed gives the same image as a run of that image alone.
  const auto [rc2, log2] = testing::run_command(cli() + " generate " + (fixtures_dir() / "pipelines/micro-sd").string() +
                                                " --prompt 'a green square' --steps 3 --seed 8 --negative_prompt blurry"
                                                " --out " + (tmp / "one").string() + " 2>&1");
  ASSERT_EQ(rc2, 0) << log2;
  EXPECT_EQ(testing::read_file(tmp / "one/0000.png").size() > 0, true);
  EXPECT_EQ(io::read_png_text(testing::read_file(tmp / "one/0000.png"), "one").size(), text.size());
}

// Found by fuzz/fuzz_image.cpp: a 184-byte PNG whose text chunk claims 1.7 GB made libpng
// allocate that much before finding the file too short. Now the chunk is refused as too large
// for the file, and the memory the process ever mapped hardly moves.
TEST(PngText, AChunkLongerThanTheFileIsRefusedWithoutItsMemory) {
  auto png = testing::read_file(fixtures_dir() / "inference/source.png");
  // A tEXt chunk of claimed length 0x65000000 right after IHDR (8 + 25 bytes in).
  std::string chunk("\x65\x00\x00\x00tEXtprompt\0a red circle", 4 + 4 + 7 + 12);
  png.insert(33, chunk);
  const auto before = train::proc_status_bytes("VmPeak");
  EXPECT_THROW_WITH(io::read_png_text(png, "bomb.png"), "bomb.png", "corrupt PNG");
  EXPECT_LT(train::proc_status_bytes("VmPeak") - before, std::int64_t{256} << 20);
}

TEST(Generate, BadInputIsOneLineAndWritesNothing) {
  testing::TempDir tmp;
  const auto run = [&](const std::string& args) {
    return testing::run_command(cli() + " generate " + args + " --out " + (tmp / "out").string() + " 2>&1");
  };
  const auto ip2p = (fixtures_dir() / "pipelines/ip2p-micro").string();
  const auto sd = (fixtures_dir() / "pipelines/micro-sd").string();
  auto [rc, log] = run(ip2p + " --prompt x");
  EXPECT_EQ(rc, 1) << log;
  EXPECT_NE(log.find("give the source image with --image"), std::string::npos) << log;
  std::tie(rc, log) = run(sd + " --prompt x --image " + (fixtures_dir() / "inference/source.png").string());
  EXPECT_EQ(rc, 1) << log;
  EXPECT_NE(log.find("--image needs an InstructPix2Pix UNet"), std::string::npos) << log;
  testing::write_file(tmp / "empty.txt", "\n  \n");
  std::tie(rc, log) = run(sd + " --prompts " + (tmp / "empty.txt").string());
  EXPECT_EQ(rc, 1) << log;
  EXPECT_NE(log.find("holds no prompt"), std::string::npos) << log;
  std::tie(rc, log) = run(sd + " --prompt x --height 36");
  EXPECT_EQ(rc, 2) << log;  // a flag's value: a usage error
  EXPECT_NE(log.find("--height 36: expected a positive multiple of 8"), std::string::npos) << log;
  std::tie(rc, log) = run(sd + " --prompt x --scheduler karras");
  EXPECT_EQ(rc, 1) << log;
  EXPECT_NE(log.find("unknown scheduler 'karras'"), std::string::npos) << log;
  testing::write_file(tmp / "bad.png", "not an image");
  std::tie(rc, log) = run(ip2p + " --prompt x --image " + (tmp / "bad.png").string());
  EXPECT_EQ(rc, 1) << log;
  EXPECT_NE(log.find("bad.png"), std::string::npos) << log;
  std::tie(rc, log) = run(sd + " --prompt x --frobnicate");
  EXPECT_EQ(rc, 2) << log;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

}  // namespace
}  // namespace lisadiff
