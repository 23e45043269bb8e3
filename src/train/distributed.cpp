#include "train/distributed.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

// c10d's Gloo process group. Its header needs Gloo's headers (Debian's libgloo-dev, only for
// the declarations: the implementation is the one inside libtorch_cpu), and this file is the
// only one that sees them. (Torch's CMake config defines USE_C10D_GLOO for its consumers.)
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
// NCCL for CUDA runs, where the wheel's CMake config says it was built with it (the process
// group lives in libtorch_cuda; nccl.h comes with the CUDA toolkit).
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "core/error.h"

namespace lisadiff::train {

namespace {

int env_int(const char* name, int fallback, int low, int high) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text, &end, 10);
  if (*end != '\0' || errno != 0 || v < low || v > high) {
    throw Error(fmt::format("environment variable {}={}: expected a whole number in [{}, {}]", name, text, low, high));
  }
  return static_cast<int>(v);
}

c10d::ReduceOp to_c10d(ProcessGroup::Op op) {
  switch (op) {
    case ProcessGroup::Op::kMax: return c10d::ReduceOp::MAX;
    case ProcessGroup::Op::kMin: return c10d::ReduceOp::MIN;
    case ProcessGroup::Op::kSum: break;
  }
  return c10d::ReduceOp::SUM;
}

// What a c10d failure says, without PyTorch's C++ stack trace.
std::string describe(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

class C10dPending final : public PendingReduce {
 public:
  C10dPending(c10::intrusive_ptr<c10d::Work> work, int rank) : work_(std::move(work)), rank_(rank) {}
  bool done() override { return work_->isCompleted(); }
  void wait() override {
    try {
      work_->wait(collective_timeout());
    } catch (const std::exception& e) {
      throw Error(fmt::format("rank {}: a collective with the other processes failed (a process died or the "
                              "processes diverged): {}", rank_, describe(e)));
    }
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  int rank_;
};

class C10dGroup final : public ProcessGroup {
 public:
  C10dGroup(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<c10d::Backend> backend, int rank, int size,
            torch::Device device)
      : store_(std::move(store)), backend_(std::move(backend)), rank_(rank), size_(size), device_(device) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  torch::Device device() const override { return device_; }

  std::unique_ptr<PendingReduce> allreduce_async(torch::Tensor& tensor, Op op) override {
    std::vector<at::Tensor> tensors{tensor};
    c10d::AllreduceOptions o;
    o.reduceOp = to_c10d(op);
    o.timeout = collective_timeout();
    try {
      return std::make_unique<C10dPending>(backend_->allreduce(tensors, o), rank_);
    } catch (const std::exception& e) {
      throw Error(fmt::format("rank {}: all-reduce failed: {}", rank_, describe(e)));
    }
  }

  void broadcast(torch::Tensor& tensor, int root) override {
    std::vector<at::Tensor> tensors{tensor};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = collective_timeout();
    C10dPending(backend_->broadcast(tensors, o), rank_).wait();
  }

  void barrier() override {
    c10d::BarrierOptions o;
    o.timeout = collective_timeout();
    C10dPending(backend_->barrier(o), rank_).wait();
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> backend_;
  int rank_, size_;
  torch::Device device_;
};

}  // namespace

DistEnv DistEnv::from_environment() {
  DistEnv env;
  env.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  env.rank = env_int("RANK", 0, 0, env.world_size - 1);
  env.local_world_size = env_int("LOCAL_WORLD_SIZE", env.world_size, 1, env.world_size);
  env.local_rank = env_int("LOCAL_RANK", env.rank % env.local_world_size, 0, env.local_world_size - 1);
  if (const char* addr = std::getenv("MASTER_ADDR"); addr && *addr) env.master_addr = addr;
  env.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  return env;
}

std::chrono::milliseconds collective_timeout() {
  static const std::chrono::milliseconds timeout = [] {
    const int seconds = env_int("LISADIFF_DIST_TIMEOUT", 1800, 1, 7 * 24 * 3600);
    return std::chrono::milliseconds(int64_t{seconds} * 1000);
  }();
  return timeout;
}

uint64_t fnv1a(const std::string& text, uint64_t seed) {
  uint64_t h = seed;
  for (const unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

void ProcessGroup::check_same(int64_t value, const std::string& what) {
  // max(v) and max(-v) in one all-reduce: equal everywhere iff max == -max(-v) == v.
  auto t = torch::tensor({value, -value}, torch::dtype(torch::kInt64)).to(device());
  allreduce(t, Op::kMax);
  const auto host = t.cpu();
  const int64_t high = host[0].item<int64_t>(), low = -host[1].item<int64_t>();
  if (high != value || low != value) {
    throw Error(fmt::format("rank {}: {} differs between the processes (this rank {}, the others range from {} to {}); "
                            "every process must train the same way (same flags, seeds and data layout)",
                            rank(), what, value, low, high));
  }
}

double ProcessGroup::mean(double value) {
  auto t = torch::tensor({value}, torch::dtype(torch::kFloat64)).to(device());
  allreduce(t, Op::kSum);
  return t.cpu().item<double>() / size();
}

std::vector<std::string> ProcessGroup::allgather(const std::string& mine) {
  // Every rank's length first (a row of zeros but this rank's entry), then the bytes the same
  // way, padded to the longest (int32 sums of one non-zero term: exact).
  auto lengths = torch::zeros({size()}, torch::kInt64);
  lengths[rank()] = static_cast<int64_t>(mine.size());
  auto on_device = lengths.to(device());
  allreduce(on_device, Op::kSum);
  lengths = on_device.cpu();
  const int64_t n = lengths.max().item<int64_t>();
  auto rows = torch::zeros({size(), n}, torch::kInt32);
  auto* row = rows.data_ptr<int32_t>() + rank() * n;
  for (std::size_t k = 0; k < mine.size(); ++k) row[k] = static_cast<unsigned char>(mine[k]);
  auto gathered = rows.to(device());
  allreduce(gathered, Op::kSum);
  const auto host = gathered.cpu();
  const auto* data = host.data_ptr<int32_t>();
  std::vector<std::string> out;
  for (int r = 0; r < size(); ++r) {
    std::string text(static_cast<std::size_t>(lengths[r].item<int64_t>()), '\0');
    for (std::size_t k = 0; k < text.size(); ++k) text[k] = static_cast<char>(data[r * n + static_cast<int64_t>(k)]);
    out.push_back(std::move(text));
  }
  return out;
}

void ProcessGroup::broadcast_any(torch::Tensor& tensor, int root) {
  torch::NoGradGuard no_grad;
  const auto type = tensor.scalar_type();
  const auto wire = type == torch::kFloat64 ? torch::kFloat64 : type == torch::kInt64 ? torch::kInt64 : torch::kFloat32;
  auto buffer = tensor.to(device(), wire).contiguous();
  if (buffer.data_ptr() == tensor.data_ptr()) buffer = buffer.clone();
  broadcast(buffer, root);
  tensor.copy_(buffer);
}

std::shared_ptr<ProcessGroup> ProcessGroup::create(const DistEnv& env, torch::Device device) {
  if (!env.distributed()) throw Error("ProcessGroup::create: WORLD_SIZE is 1, there is no group to join");
#ifndef USE_C10D_NCCL
  if (device.is_cuda()) {
    throw Error("multi-process training on CUDA needs the NCCL process group, which this build of lisadiff does "
                "not include; run on CPU (Gloo) or with one process");
  }
#endif
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = env.world_size;
  so.waitWorkers = true;
  so.timeout = collective_timeout();
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    throw Error(fmt::format("rank {}: rendezvous at {}:{} failed ({}): {}", env.rank, env.master_addr,
                            env.master_port, env.rank == 0 ? "serving the store" : "reaching rank 0's store",
                            describe(e)));
  }
  c10::intrusive_ptr<c10d::Backend> backend;
  const char* kind = device.is_cuda() ? "nccl" : "gloo";
  try {
    if (device.is_cuda()) {
#ifdef USE_C10D_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = collective_timeout();
      backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, options);
#endif
    } else {
      auto options = c10d::ProcessGroupGloo::Options::create_default(collective_timeout());
      backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, options);
    }
  } catch (const std::exception& e) {
    throw Error(fmt::format("rank {}: connecting the {} processes ({}) failed: {}", env.rank, env.world_size, kind,
                            describe(e)));
  }
  spdlog::debug("rank {} of {}: process group ready ({}, store {}:{})", env.rank, env.world_size, kind,
                env.master_addr, env.master_port);
  return std::make_shared<C10dGroup>(std::move(store), std::move(backend), env.rank, env.world_size, device);
}

// ---------------------------------------------------------------------------------------------
// GradientSync

namespace {
// Each tensor's contribution to a bucket's checksum: 16 bits, so that the sum over a bucket
// (mod 2^16) and its all-reduced sum over up to 256 ranks are exact in float32.
double index_tag(std::size_t index) { return static_cast<double>(fnv1a(std::to_string(index)) & 0xffffu); }
}  // namespace

GradientSync::GradientSync(std::shared_ptr<ProcessGroup> group, int64_t bucket_bytes, int max_in_flight)
    : group_(std::move(group)), bucket_bytes_(bucket_bytes), max_in_flight_(std::max(1, max_in_flight)) {
  if (!group_) throw Error("GradientSync: no process group");
}

GradientSync::~GradientSync() {
  // Pending collectives must finish before their buffers go (an error here is reported by
  // whatever failed first).
  for (auto& b : in_flight_) {
    try {
      if (b.pending) b.pending->wait();
    } catch (...) {
    }
  }
}

void GradientSync::add(std::size_t index, torch::Tensor grad) {
  hash_ = fnv1a(std::to_string(index), hash_);
  ++count_;
  open_bytes_ += grad.numel() * grad.element_size();
  open_.indices.push_back(index);
  open_.grads.push_back(std::move(grad));
  if (open_bytes_ >= bucket_bytes_) launch();
}

void GradientSync::launch() {
  if (open_.indices.empty()) return;
  while (static_cast<int>(in_flight_.size()) >= max_in_flight_) {
    auto done = finish(in_flight_.front());  // ready() hands these out
    completed_.insert(completed_.end(), done.begin(), done.end());
    in_flight_.pop_front();
  }
  torch::NoGradGuard no_grad;
  Bucket b = std::move(open_);
  open_ = Bucket();
  open_bytes_ = 0;
  double tag = 0;
  for (const auto i : b.indices) tag += index_tag(i);
  b.checksum = std::fmod(tag, 65536.0);
  std::vector<torch::Tensor> parts;
  parts.reserve(b.grads.size() + 1);
  for (const auto& g : b.grads) parts.push_back(g.reshape({-1}).to(group_->device(), torch::kFloat32));
  parts.push_back(torch::full({1}, b.checksum, torch::dtype(torch::kFloat32).device(group_->device())));
  b.flat = torch::cat(parts);
  bytes_ += b.flat.numel() * 4;
  b.pending = group_->allreduce_async(b.flat, ProcessGroup::Op::kSum);
  in_flight_.push_back(std::move(b));
}

std::vector<std::size_t> GradientSync::finish(Bucket& b) {
  const auto t0 = std::chrono::steady_clock::now();
  b.pending->wait();
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  torch::NoGradGuard no_grad;
  const int64_t n = b.flat.numel();
  const double got = b.flat[n - 1].item<double>();
  if (got != b.checksum * group_->size()) {
    throw Error(fmt::format("rank {}: the processes all-reduced different gradients (a bucket of {} tensors starting "
                            "with tensor {} does not match its peers'): every process must build the same graph "
                            "and train the same tensors",
                            group_->rank(), b.indices.size(), b.indices.front()));
  }
  b.flat.div_(group_->size());
  int64_t offset = 0;
  for (auto& g : b.grads) {
    const int64_t k = g.numel();
    g.copy_(b.flat.slice(0, offset, offset + k).view(g.sizes()));
    offset += k;
  }
  return b.indices;
}

std::vector<std::size_t> GradientSync::ready() {
  std::vector<std::size_t> out = std::move(completed_);
  completed_.clear();
  while (!in_flight_.empty() && in_flight_.front().pending->done()) {
    auto done = finish(in_flight_.front());
    out.insert(out.end(), done.begin(), done.end());
    in_flight_.pop_front();
  }
  return out;
}

std::vector<std::size_t> GradientSync::flush() {
  launch();
  std::vector<std::size_t> out = std::move(completed_);
  completed_.clear();
  while (!in_flight_.empty()) {
    auto done = finish(in_flight_.front());
    out.insert(out.end(), done.begin(), done.end());
    in_flight_.pop_front();
  }
  return out;
}

void GradientSync::reset_step() {
  count_ = 0;
  hash_ = 1469598103934665603ull;
}

}  // namespace lisadiff::train
