// A full disk (docs/hardening.md): a checkpoint or the final save that fails with ENOSPC
// stops the run with one error line naming the file, leaves the previous checkpoint whole,
// and a rerun with space resumes from it to the uninterrupted run's weights, bit for bit.
// The failure is injected where every file is written (io/atomic_file.cpp's
// LISADIFF_FAULT_ENOSPC: writes to paths containing its value fail as on a full disk).
#include <gtest/gtest.h>

#include <sstream>

#include "test_util.h"
#include "tools/make_dataset.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::string app() { return (fs::path(testing::cli_path()).parent_path() / "text_to_image").string(); }

std::string command(const fs::path& data, const fs::path& out) {
  return app() + " --pretrained_model_name_or_path " + (testing::fixtures_dir() / "pipelines/micro-sd").string() +
         " --train_data_dir " + data.string() +
         " --resolution 32 --train_batch_size 2 --max_train_steps 4 --checkpointing_steps 2 --seed 3"
         " --learning_rate 1e-3 --method lisa --lisa_interval 3 --output_dir " + out.string();
}

std::vector<std::string> error_lines(const std::string& log) {
  std::vector<std::string> out;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.find("error: ") != std::string::npos) out.push_back(line);
  }
  return out;
}

// No folder or file of an interrupted save is left next to the checkpoints.
void expect_no_leftovers(const fs::path& out) {
  for (const auto& e : fs::directory_iterator(out)) {
    const auto name = e.path().filename().string();
    EXPECT_FALSE(name.rfind(".checkpoint-", 0) == 0) << "left behind: " << e.path();
  }
}

const std::string kWeights = "unet/diffusion_pytorch_model.safetensors";

// The dataset (tmp/data) and the run that never fails (tmp/straight).
fs::path make_data_and_straight_run(const TempDir& tmp) {
  tools::MakeDatasetOptions m;
  m.kind = "t2i";
  m.format = "folder";
  m.n = 8;
  m.size = 40;
  m.out = tmp / "data";
  tools::make_dataset(m);
  const auto [rc, log] = testing::run_command(command(tmp / "data", tmp / "straight") + " 2>&1");
  EXPECT_EQ(rc, 0) << log;
  return tmp / "straight";
}

TEST(DiskFull, ACheckpointThatHitsENOSPCStopsTheRunAndTheRerunResumesFromThePreviousOne) {
  TempDir tmp;
  const auto straight = make_data_and_straight_run(tmp);
  ASSERT_FALSE(HasFailure());
  // The disk fills while checkpoint-4 is written.
  const auto out = tmp / "full";
  {
    const auto [rc, log] =
        testing::run_command("LISADIFF_FAULT_ENOSPC=checkpoint-4 " + command(tmp / "data", out) + " 2>&1");
    EXPECT_EQ(rc, 1) << log;
    const auto errors = error_lines(log);
    ASSERT_EQ(errors.size(), 1u) << log;
    EXPECT_NE(errors[0].find("checkpoint-4"), std::string::npos) << errors[0];
    EXPECT_NE(errors[0].find("No space left on device"), std::string::npos) << errors[0];
  }
  EXPECT_TRUE(fs::exists(out / "checkpoint-2/checkpoint.json"));
  EXPECT_FALSE(fs::exists(out / "checkpoint-4"));
  EXPECT_FALSE(fs::exists(out / kWeights)) << "no final save after a failed checkpoint";
  expect_no_leftovers(out);
  // With space again, the rerun resumes from checkpoint-2 and ends as the straight run did.
  {
    const auto [rc, log] = testing::run_command(command(tmp / "data", out) + " --resume_from_checkpoint latest 2>&1");
    ASSERT_EQ(rc, 0) << log;
    EXPECT_NE(log.find("checkpoint-2 at step 2"), std::string::npos) << log;
  }
  EXPECT_TRUE(testing::read_file(out / kWeights) == testing::read_file(straight / kWeights));
}

TEST(DiskFull, AFinalSaveThatHitsENOSPCLeavesTheLastCheckpointAndTheRerunFinishes) {
  TempDir tmp;
  const auto straight = make_data_and_straight_run(tmp);
  ASSERT_FALSE(HasFailure());
  // The final save writes <out>/unet/...; checkpoints write <out>/.checkpoint-N.tmp-PID/unet/...
  const auto out = tmp / "full";
  {
    const auto [rc, log] = testing::run_command("LISADIFF_FAULT_ENOSPC='" + (out / "unet").string() + "/' " +
                                                command(tmp / "data", out) + " 2>&1");
    EXPECT_EQ(rc, 1) << log;
    const auto errors = error_lines(log);
    ASSERT_EQ(errors.size(), 1u) << log;
    EXPECT_NE(errors[0].find((out / "unet").string()), std::string::npos) << errors[0];
    EXPECT_NE(errors[0].find("No space left on device"), std::string::npos) << errors[0];
  }
  EXPECT_TRUE(fs::exists(out / "checkpoint-4/checkpoint.json"));
  EXPECT_FALSE(fs::exists(out / kWeights));
  expect_no_leftovers(out);
  {
    const auto [rc, log] = testing::run_command(command(tmp / "data", out) + " --resume_from_checkpoint latest 2>&1");
    ASSERT_EQ(rc, 0) << log;
    EXPECT_NE(log.find("checkpoint-4 at step 4"), std::string::npos) << log;
  }
  EXPECT_TRUE(testing::read_file(out / kWeights) == testing::read_file(straight / kWeights));
}

}  // namespace
}  // namespace lisadiff
