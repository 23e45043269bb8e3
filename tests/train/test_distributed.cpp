// Data-parallel training on Gloo (CPU): `lisadiff launch` with 2 processes of batch B against
// one process of batch 2B (tests/dist_worker.cpp: each recipe's step with stored draws, every
// rank its slice of each global batch), for every recipe and method, with and without gradient
// accumulation; the LISA set check; the launcher's failure handling and a 2-machine run on the
// loopback.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>

#include "io/safetensors.h"
#include "tools/make_dataset.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::string worker() { return (fs::path(testing::cli_path()).parent_path().parent_path() / "tests/dist_worker").string(); }
fs::path micro_sd() { return testing::fixtures_dir() / "pipelines/micro-sd"; }

// A port nothing listens on now (the kernel's pick for a socket bound to port 0).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

std::string launch(int processes, int port) {
  return testing::cli_path() + " launch --num_processes " + std::to_string(processes) + " --main_process_port " +
         std::to_string(port) + " " + worker();
}

std::vector<double> losses(const fs::path& metrics) {
  std::vector<double> out;
  for (const auto& line : testing::read_jsonl(metrics)) {
    if (line.contains("loss")) out.push_back(line.at("loss").get<double>());
  }
  return out;
}

struct Case {
  const char* recipe;
  const char* method;
  int accumulation;
  bool fused = false;  // full and lora: the fused step (in the backward pass) instead of the classic one
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.recipe << " " << c.method << " A" << c.accumulation << (c.fused ? " fused" : "");
}

class DataParallel : public ::testing::TestWithParam<Case> {};

// 2 processes of batch 2 equal 1 process of batch 4 for 10 optimizer steps: the losses of every step (the ranks'
// mean), the trained tensors and LCM's target. Tolerance: the runs differ only in the order
// of reductions (the batch mean is (mean of 2 + mean of 2) / 2 instead of a mean of 4, and the
// gradients of each half are summed by the all-reduce): float32 rounding of ~1e-7 relative per
// operation. Losses to 1e-5 relative. Weights to 1% of the lr (1e-5 absolute at lr 1e-3, 5e-5
// for LoRA at 5e-3): AdamW divides each gradient by its own running magnitude, so an element
// whose gradient is near zero (LoRA's A while B is still small) moves by up to the lr whatever
// the gradient's size, and rounding there shows as 1e-6 to 3e-5; a gradient that was not
// averaged (or averaged wrongly) moves weights by about the lr itself, 100 times more.
TEST_P(DataParallel, TwoProcessesEqualOneWithTheGlobalBatch) {
  const auto c = GetParam();
  TempDir tmp;
  const std::string args = std::string(" --recipe ") + c.recipe + " --method " + c.method + " --accumulation " +
                           std::to_string(c.accumulation) + " --global_batch 4 --steps 10 --pipeline " +
                           micro_sd().string() + (c.fused ? " --fused" : "");
  const auto [rc1, log1] = testing::run_command(worker() + args + " --out " + (tmp / "one").string() + " 2>&1");
  ASSERT_EQ(rc1, 0) << log1;
  const auto [rc2, log2] =
      testing::run_command(launch(2, free_port()) + args + " --out " + (tmp / "two").string() + " 2>&1");
  ASSERT_EQ(rc2, 0) << log2;
  EXPECT_NE(log2.find("[rank1]"), std::string::npos) << log2;

  const auto one = losses(tmp / "one/metrics.jsonl"), two = losses(tmp / "two/metrics.jsonl");
  ASSERT_EQ(one.size(), 10u);
  ASSERT_EQ(two.size(), one.size());
  for (std::size_t i = 0; i < one.size(); ++i) EXPECT_NEAR(two[i], one[i], 1e-5 * std::abs(one[i]) + 1e-7) << "step " << i + 1;

  const io::SafetensorsReader a(tmp / "one/result.safetensors"), b(tmp / "two/result.safetensors");
  ASSERT_EQ(a.entries().size(), b.entries().size());
  int64_t moved = 0;
  for (const auto& e : a.entries()) {
    const auto x = a.tensor(e.name), y = b.tensor(e.name);
    EXPECT_TRUE(testing::close_tensor(e.name, y, x, std::string(c.method) == "lora" ? 5e-5 : 1e-5, 1e-4));
    moved += e.name.rfind("trained.", 0) == 0 ? 1 : 0;
  }
  EXPECT_GT(moved, 0);
}

INSTANTIATE_TEST_SUITE_P(Recipes, DataParallel,
                         ::testing::Values(Case{"lcm", "lisa", 1}, Case{"lcm", "full", 1}, Case{"lcm", "lora", 1},
                                           Case{"lcm", "lisa", 2}, Case{"lcm", "full", 2}, Case{"lcm", "lora", 2},
                                           Case{"ip2p", "lisa", 1}, Case{"ip2p", "full", 1}, Case{"ip2p", "lora", 1},
                                           Case{"ip2p", "lisa", 2}, Case{"ip2p", "full", 2}, Case{"ip2p", "lora", 2},
                                           Case{"dpo", "lisa", 1}, Case{"dpo", "full", 1}, Case{"dpo", "lora", 1},
                                           Case{"dpo", "lisa", 2}, Case{"dpo", "full", 2}, Case{"dpo", "lora", 2},
                                           Case{"lcm", "full", 2, true}, Case{"ip2p", "lora", 2, true},
                                           Case{"dpo", "full", 1, true}, Case{"dpo", "lora", 1, true}),
                         [](const auto& info) {
                           return std::string(info.param.recipe) + "_" + info.param.method + "_A" +
                                  std::to_string(info.param.accumulation) + (info.param.fused ? "_fused" : "");
                         });

// `lisadiff launch --num_processes 1 APP` is the bare APP's run, bit for bit.
TEST(DataParallelLaunch, OneProcessIsTheBareRun) {
  TempDir tmp;
  const std::string args = " --recipe lcm --method lisa --steps 3 --global_batch 2 --pipeline " + micro_sd().string();
  const auto [rc1, log1] = testing::run_command(worker() + args + " --out " + (tmp / "bare").string() + " 2>&1");
  ASSERT_EQ(rc1, 0) << log1;
  const auto [rc2, log2] = testing::run_command(launch(1, free_port()) + args + " --out " + (tmp / "one").string() + " 2>&1");
  ASSERT_EQ(rc2, 0) << log2;
  EXPECT_EQ(losses(tmp / "bare/metrics.jsonl"), losses(tmp / "one/metrics.jsonl"));
  const io::SafetensorsReader a(tmp / "bare/result.safetensors"), b(tmp / "one/result.safetensors");
  for (const auto& e : a.entries()) EXPECT_TRUE(testing::same_tensor(b.tensor(e.name), a.tensor(e.name))) << e.name;
}

// A rank with another LISA seed draws another set: every process stops with the check's
// message instead of training apart, and the launcher exits non-zero.
TEST(DataParallelChecks, DifferentLisaSetsStopTheRun) {
  TempDir tmp;
  const auto [rc, log] = testing::run_command(launch(2, free_port()) + " --recipe lcm --method lisa --steps 2 --pipeline " +
                                              micro_sd().string() + " --lisa_seed_per_rank --out " +
                                              (tmp / "run").string() + " 2>&1");
  EXPECT_NE(rc, 0) << log;
  EXPECT_NE(log.find("the LISA set at the start"), std::string::npos) << log;
  EXPECT_NE(log.find("differs between the processes"), std::string::npos) << log;
}

// Two launchers on the loopback, machine ranks 0 and 1, one process each: one run of 2.
TEST(DataParallelLaunch, TwoMachinesOnTheLoopbackTrain) {
  TempDir tmp;
  const int port = free_port();
  const std::string common = testing::cli_path() + " launch --num_processes 2 --num_machines 2 --main_process_ip 127.0.0.1 "
                             "--main_process_port " + std::to_string(port);
  const std::string args = " " + worker() + " --recipe ip2p --method lisa --steps 3 --global_batch 4 --pipeline " +
                           micro_sd().string() + " --out " + (tmp / "run").string();
  const auto [rc, log] = testing::run_command("(" + common + " --machine_rank 1" + args + " > " + (tmp / "m1.log").string() +
                                              " 2>&1 &) ; " + common + " --machine_rank 0" + args + " 2>&1; rc=$?; "
                                              "sleep 1; cat " + (tmp / "m1.log").string() + "; exit $rc");
  EXPECT_EQ(rc, 0) << log;
  EXPECT_EQ(losses(tmp / "run/metrics.jsonl").size(), 3u) << log;
  EXPECT_NE(log.find("machine 1 of 2"), std::string::npos) << log;
  EXPECT_NE(log.find("[rank1]"), std::string::npos) << log;
}

// The launcher: an unknown app, a wrong count, and a process that fails: the others are
// stopped and the launcher exits with the failed one's code.
TEST(DataParallelLaunch, FailuresEndEveryProcess) {
  TempDir tmp;
  {
    const auto [rc, log] = testing::run_command(testing::cli_path() + " launch --num_processes 2 no_such_app 2>&1");
    EXPECT_EQ(rc, 1) << log;
    EXPECT_NE(log.find("no app 'no_such_app'"), std::string::npos) << log;
  }
  {
    const auto [rc, log] = testing::run_command(testing::cli_path() + " launch --num_processes 3 --num_machines 2 " +
                                                worker() + " 2>&1");
    EXPECT_EQ(rc, 1) << log;
    EXPECT_NE(log.find("multiple of --num_machines"), std::string::npos) << log;
  }
  {
    const auto [rc, log] = testing::run_command(testing::cli_path() + " launch 2>&1");
    EXPECT_EQ(rc, 2) << log;
  }
  {
    // Rank 1 exits with 3 at once; rank 0 would sleep for a minute.
    const auto script = tmp / "app.sh";
    testing::write_file(script, "#!/bin/sh\nif [ \"$RANK\" = 1 ]; then echo failing; exit 3; fi\nsleep 60\n");
    fs::permissions(script, fs::perms::owner_all);
    const auto t0 = std::chrono::steady_clock::now();
    const auto [rc, log] = testing::run_command(testing::cli_path() + " launch --num_processes 2 " + script.string() + " 2>&1");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(rc, 3) << log;
    EXPECT_LT(seconds, 30) << log;
    EXPECT_NE(log.find("[rank1]: failing"), std::string::npos) << log;
    EXPECT_NE(log.find("rank 1"), std::string::npos) << log;
  }
}

// Ctrl-C (SIGINT) on the launcher ends every process and the launcher exits with 130.
TEST(DataParallelLaunch, InterruptEndsEveryProcess) {
  TempDir tmp;
  const auto script = tmp / "app.sh";
  testing::write_file(script, "#!/bin/sh\necho $$ >> " + (tmp / "pids").string() + "\nexec sleep 60\n");
  fs::permissions(script, fs::perms::owner_all);
  const auto [rc, log] = testing::run_command(
      "(" + testing::cli_path() + " launch --num_processes 2 " + script.string() + " > " + (tmp / "launch.log").string() +
      " 2>&1 & pid=$!; while [ $(cat " + (tmp / "pids").string() + " 2>/dev/null | wc -l) -lt 2 ]; do sleep 0.05; done; "
      "start=$(date +%s); kill -INT $pid; wait $pid; echo \"exit $? after $(( $(date +%s) - start )) s\"; "
      "for p in $(cat " + (tmp / "pids").string() + "); do kill -0 $p 2>/dev/null && echo alive $p; done; true)");
  EXPECT_NE(log.find("exit 130 after"), std::string::npos) << log << testing::read_file(tmp / "launch.log");
  EXPECT_EQ(log.find("alive"), std::string::npos) << log;
  const auto after = log.find(" after ");
  ASSERT_NE(after, std::string::npos) << log;
  EXPECT_LT(std::stoi(log.substr(after + 7)), 5) << log;
}

// SIGKILL one rank of a 2-process lcm_distill run mid-training: every process is gone and the
// launcher exits non-zero within 60 s; the last checkpoint is intact, and the run resumed on 2
// processes ends with the straight run's weights, bit for bit (each rank's data position and
// random numbers come back from the checkpoint).
TEST(DataParallelFaults, AKilledRankEndsTheRunAndItResumesToTheStraightRun) {
  TempDir tmp;
  tools::MakeDatasetOptions m;
  m.kind = "t2i";
  m.format = "wds";
  m.n = 16;
  m.size = 40;
  m.shard_size = 4;
  m.out = tmp / "data";
  tools::make_dataset(m);
  const auto app = (fs::path(testing::cli_path()).parent_path() / "lcm_distill").string();
  const auto command = [&](const fs::path& out) {
    return testing::cli_path() + " launch --num_processes 2 --main_process_port " + std::to_string(free_port()) + " " +
           app + " --pretrained_teacher_model " + micro_sd().string() + " --train_shards_path_or_url '" +
           (tmp / "data/{00000..00003}.tar").string() + "' --resolution 32 --train_batch_size 2"
           " --max_train_steps 24 --checkpointing_steps 4 --seed 3 --learning_rate 1e-3 --lisa_interval 3"
           " --output_dir " + out.string();
  };
  const auto [rc, log] = testing::run_command(command(tmp / "straight") + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  const auto killed = tmp / "killed";
  // The launcher in the background; once checkpoint-8 exists, SIGKILL one of its processes.
  const auto [krc, klog] = testing::run_command(
      "(" + command(killed) + " > " + (tmp / "killed.log").string() + " 2>&1 & pid=$!; while [ ! -d " +
      (killed / "checkpoint-8").string() + " ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done; start=$(date +%s); "
      "kill -9 $(pgrep -P $pid | tail -n 1); wait $pid; echo \"exit $? after $(( $(date +%s) - start )) s\"; "
      "pgrep -P $pid >/dev/null && echo left-behind)");
  const auto killed_log = testing::read_file(tmp / "killed.log");
  EXPECT_EQ(klog.find("exit 0 "), std::string::npos) << klog << killed_log;
  EXPECT_NE(klog.find("exit "), std::string::npos) << klog;
  EXPECT_EQ(klog.find("left-behind"), std::string::npos) << klog;
  const auto after = klog.find(" after ");
  ASSERT_NE(after, std::string::npos) << klog;
  EXPECT_LT(std::stoi(klog.substr(after + 7)), 60) << klog;
  EXPECT_NE(killed_log.find("killed by signal 9"), std::string::npos) << killed_log;
  ASSERT_TRUE(fs::exists(killed / "checkpoint-8/training_state.json")) << killed_log;

  const auto [rrc, rlog] = testing::run_command(command(killed) + " --resume_from_checkpoint latest 2>&1");
  ASSERT_EQ(rrc, 0) << rlog;
  EXPECT_NE(rlog.find("resumed from"), std::string::npos) << rlog;
  for (const char* file : {"unet/diffusion_pytorch_model.safetensors", "unet_target/diffusion_pytorch_model.safetensors",
                           "checkpoint-24/optimizer.safetensors", "checkpoint-24/random_states_1.safetensors"}) {
    EXPECT_TRUE(testing::read_file(killed / file) == testing::read_file(tmp / "straight" / file))
        << file << " differs from the straight run's";
  }
  EXPECT_EQ(losses(killed / "metrics.jsonl"), losses(tmp / "straight/metrics.jsonl"));
}

// A checkpoint of 2 processes resumes on 1 and the other way round (instruct_pix2pix on an
// image folder): weights, optimizer, LISA and step continue, and the data position counts the
// examples all processes read, so the resumed run goes on with the next ones.
TEST(DataParallelResume, AnotherNumberOfProcessesContinuesTheData) {
  TempDir tmp;
  tools::MakeDatasetOptions m;
  m.kind = "ip2p";
  m.format = "folder";
  m.n = 24;
  m.size = 40;
  m.out = tmp / "data";
  tools::make_dataset(m);
  const auto app = (fs::path(testing::cli_path()).parent_path() / "instruct_pix2pix").string();
  const auto command = [&](int processes, int batch, const fs::path& out) {
    return testing::cli_path() + " launch --num_processes " + std::to_string(processes) + " --main_process_port " +
           std::to_string(free_port()) + " " + app + " --pretrained_model_name_or_path " + micro_sd().string() +
           " --dataset_name " + (tmp / "data").string() + " --resolution 32 --train_batch_size " +
           std::to_string(batch) + " --max_train_steps 4 --checkpointing_steps 2 --seed 1 --output_dir " +
           out.string() + " 2>&1";
  };
  // 2 processes of 1 example for 2 steps: 4 examples read; 1 process of 2 goes on at the 5th.
  {
    const auto [rc, log] = testing::run_command(command(2, 1, tmp / "a") + " --max_train_steps 2");
    ASSERT_EQ(rc, 0) << log;
    const auto [rrc, rlog] = testing::run_command(command(1, 2, tmp / "a") + " --resume_from_checkpoint latest");
    ASSERT_EQ(rrc, 0) << rlog;
    EXPECT_NE(rlog.find("written by 2 process(es), resumed by 1"), std::string::npos) << rlog;
    EXPECT_NE(rlog.find("rank 0 continues at record 4 of its share"), std::string::npos) << rlog;
    const auto state = testing::read_json(tmp / "a/checkpoint-4/training_state.json");
    EXPECT_EQ(state.at("parts").at("data_loader").at("records").get<int64_t>(), 8) << state.dump(1);
  }
  // 1 process of 2 for 2 steps: 4 examples; 2 processes of 1 go on at their 3rd and 4th.
  {
    const auto [rc, log] = testing::run_command(command(1, 2, tmp / "b") + " --max_train_steps 2");
    ASSERT_EQ(rc, 0) << log;
    const auto [rrc, rlog] = testing::run_command(command(2, 1, tmp / "b") + " --resume_from_checkpoint latest");
    ASSERT_EQ(rrc, 0) << rlog;
    EXPECT_NE(rlog.find("rank 0 continues at record 2 of its share"), std::string::npos) << rlog;
    const auto state = testing::read_json(tmp / "b/checkpoint-4/training_state.json");
    EXPECT_EQ(state.at("world_size").get<int>(), 2);
    for (const auto& part : state.at("rank_parts")) EXPECT_EQ(part.at("data_loader").at("records").get<int64_t>(), 4);
  }
}

}  // namespace
}  // namespace lisadiff
