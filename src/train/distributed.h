// Data-parallel training over torch.distributed's c10d: the process group a multi-process run
// trains on, and what the training loop needs from it.
//
// The environment contract is torchrun's (and `lisadiff launch`'s, which sets it):
//   RANK, WORLD_SIZE          this process's place among all of them
//   LOCAL_RANK, LOCAL_WORLD_SIZE   its place on this machine (the CUDA device it uses)
//   MASTER_ADDR, MASTER_PORT  where rank 0 serves the TCPStore the processes meet at
// A process without WORLD_SIZE (or with WORLD_SIZE=1) is a single-process run: no process
// group, nothing communicates, and the run is the one a bare executable makes.
//
// The group is c10d's ProcessGroupGloo on a CPU and ProcessGroupNCCL on CUDA. Every collective
// has a timeout (LISADIFF_DIST_TIMEOUT seconds, default 1800, accelerate's): a peer that died
// ends the run with an error instead of hanging it (a closed connection fails at once).
//
// All collectives must be called in the same order on every rank: the training loop's
// checks (check_same) compare cheap per-step summaries and name what differs instead of
// letting mismatched collectives pair up.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace lisadiff::train {

struct DistEnv {
  int rank = 0, world_size = 1;
  int local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Reads the variables above; unset ones keep their single-process values. Throws
  // lisadiff::Error naming the variable for a value that is not a number or out of range
  // (RANK >= WORLD_SIZE, a port outside 1..65535).
  static DistEnv from_environment();
  bool distributed() const { return world_size > 1; }
};

// One collective in flight.
class PendingReduce {
 public:
  virtual ~PendingReduce() = default;
  virtual bool done() = 0;  // finished (successfully or not), without waiting
  virtual void wait() = 0;  // throws lisadiff::Error when the collective failed
};

class ProcessGroup {
 public:
  enum class Op { kSum, kMax, kMin };
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual torch::Device device() const = 0;  // where the tensors it reduces live
  // In place on every rank; the tensor must be contiguous and on device().
  virtual std::unique_ptr<PendingReduce> allreduce_async(torch::Tensor& tensor, Op op = Op::kSum) = 0;
  void allreduce(torch::Tensor& tensor, Op op = Op::kSum) { allreduce_async(tensor, op)->wait(); }
  virtual void broadcast(torch::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;

  // Stops with lisadiff::Error when `value` is not the same on every rank; `what` names it in
  // the message ("the LISA set at step 40"). One small all-reduce.
  void check_same(int64_t value, const std::string& what);
  // The mean of `value` over the ranks (logged losses).
  double mean(double value);
  // Every rank's `mine`, in rank order, on every rank (small payloads: checkpoint state).
  std::vector<std::string> allgather(const std::string& mine);
  // Copies rank `root`'s values into `tensor` on every rank (any dtype; through a float32 or
  // float64 copy where the backend lacks the type).
  void broadcast_any(torch::Tensor& tensor, int root);

  // The group for `env` (env.distributed() must hold): rendezvous at the TCPStore on
  // MASTER_ADDR:MASTER_PORT served by rank 0, Gloo for a CPU `device`, NCCL for CUDA.
  // Throws lisadiff::Error naming the address when the rendezvous fails.
  static std::shared_ptr<ProcessGroup> create(const DistEnv& env, torch::Device device);
};

// The timeout of every collective (LISADIFF_DIST_TIMEOUT seconds, default 1800).
std::chrono::milliseconds collective_timeout();

// A 64-bit FNV-1a hash, for comparing names and sets across ranks.
uint64_t fnv1a(const std::string& text, uint64_t seed = 1469598103934665603ull);

// Gradient averaging across ranks, bucketed and asynchronous, as DDP's reducer: gradients
// are added in the order the backward pass produces them (the same on every rank when every
// rank builds the same graph); a bucket is flattened and its all-reduce launched as soon as
// it holds bucket_bytes, and the backward pass goes on while it runs. Reduced gradients are
// written back into the tensors that were added (averaged: sum / world size), which are then
// reported as ready, in the order they were added. At most `max_in_flight` buckets are
// pending: a further launch first waits for the oldest.
//
// Each bucket carries a checksum of its tensors' indices; a rank that reduced another list of
// tensors than its peers stops with an error naming the step. step_summary() gives the count
// and hash of the tensors reduced in the step, for ProcessGroup::check_same.
class GradientSync {
 public:
  GradientSync(std::shared_ptr<ProcessGroup> group, int64_t bucket_bytes = 25ll << 20, int max_in_flight = 2);
  ~GradientSync();
  // `grad` (float32, contiguous or not) is kept alive until it is reduced.
  void add(std::size_t index, torch::Tensor grad);
  // Tensors whose reduced gradient is in place now (finished buckets, without waiting).
  std::vector<std::size_t> ready();
  // Launches the partial bucket and waits for everything: every added tensor is reduced.
  std::vector<std::size_t> flush();
  // Number and hash of the tensors added since the last reset.
  int64_t count() const { return count_; }
  int64_t hash() const { return static_cast<int64_t>(hash_ & 0x7fffffffffffffffull); }
  void reset_step();
  ProcessGroup& group() { return *group_; }
  int64_t bytes_reduced() const { return bytes_; }
  double wait_seconds() const { return wait_seconds_; }  // time spent blocked on collectives

 private:
  struct Bucket {
    std::vector<std::size_t> indices;
    std::vector<torch::Tensor> grads;
    torch::Tensor flat;
    std::unique_ptr<PendingReduce> pending;
    double checksum = 0;
  };
  void launch();
  std::vector<std::size_t> finish(Bucket& b);

  std::shared_ptr<ProcessGroup> group_;
  int64_t bucket_bytes_;
  int max_in_flight_;
  Bucket open_;
  int64_t open_bytes_ = 0;
  std::deque<Bucket> in_flight_;
  std::vector<std::size_t> completed_;  // reduced by launch() while it made room, not yet handed out
  int64_t count_ = 0, bytes_ = 0;
  uint64_t hash_ = 1469598103934665603ull;
  double wait_seconds_ = 0;
};

}  // namespace lisadiff::train
