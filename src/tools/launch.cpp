#include "tools/launch.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/error.h"

namespace lisadiff::tools {

namespace fs = std::filesystem;

namespace {

struct KnownApp {
  const char* name;
  const char* executable;
  std::vector<std::string> extra;  // arguments the name implies
};

const std::vector<KnownApp>& known_apps() {
  static const std::vector<KnownApp> apps = {
      {"instruct_pix2pix", "instruct_pix2pix", {}},
      {"train_instruct_pix2pix.py", "instruct_pix2pix", {}},
      {"diffusion_dpo", "diffusion_dpo", {}},
      {"train_diffusion_dpo.py", "diffusion_dpo", {}},
      {"lcm_distill", "lcm_distill", {}},
      {"train_lcm_distill_sd_wds.py", "lcm_distill", {}},
      {"train_lcm_distill_lora_sd_wds.py", "lcm_distill", {"--method", "lora"}},
      {"text_to_image", "text_to_image", {}},
      {"train_text_to_image.py", "text_to_image", {}},
      {"train_text_to_image_lora.py", "text_to_image", {"--method", "lora"}},
  };
  return apps;
}

fs::path self_dir() {
  std::error_code ec;
  const auto exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

bool executable(const fs::path& p) { return ::access(p.c_str(), X_OK) == 0 && fs::is_regular_file(p); }

volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

struct Child {
  int local_rank = 0, rank = 0;
  pid_t pid = -1;
  int out = -1;  // read end of its stdout+stderr pipe
  std::string pending;
  bool running = true;
  int status = 0;
};

// Writes complete lines of `c.pending` with the rank prefix; `all` also flushes a last
// partial line.
void emit(Child& c, bool all) {
  std::size_t start = 0;
  for (std::size_t i = 0; i < c.pending.size(); ++i) {
    if (c.pending[i] == '\n' || c.pending[i] == '\r') {
      if (i > start) std::fprintf(stdout, "[rank%d]: %.*s\n", c.rank, static_cast<int>(i - start), c.pending.data() + start);
      start = i + 1;
    }
  }
  c.pending.erase(0, start);
  if (all && !c.pending.empty()) {
    std::fprintf(stdout, "[rank%d]: %s\n", c.rank, c.pending.c_str());
    c.pending.clear();
  }
  std::fflush(stdout);
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return "ended";
}

}  // namespace

std::string resolve_app(const std::string& app, std::vector<std::string>& args) {
  if (app.find('/') != std::string::npos) {
    if (!executable(app)) throw Error(app, "not an executable file");
    return app;
  }
  std::string name = app;
  for (const auto& k : known_apps()) {
    if (app == k.name) {
      name = k.executable;
      args.insert(args.end(), k.extra.begin(), k.extra.end());
      break;
    }
  }
  if (const auto dir = self_dir(); !dir.empty()) {
    for (const auto& candidate : {dir / name, dir / name / name, dir.parent_path() / name / name}) {
      if (executable(candidate)) return candidate.string();
    }
  }
  if (const char* path = std::getenv("PATH")) {
    std::string p = path;
    std::size_t start = 0;
    while (start <= p.size()) {
      const auto end = p.find(':', start);
      const fs::path candidate = fs::path(p.substr(start, end == std::string::npos ? std::string::npos : end - start)) / name;
      if (executable(candidate)) return candidate.string();
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  std::string names;
  for (const auto& k : known_apps()) names += std::string(names.empty() ? "" : ", ") + k.name;
  throw Error(fmt::format("launch: no app '{}' (beside {} or on PATH); the apps are {}, or give a path", app,
                          self_dir().string(), names));
}

int launch(const LaunchOptions& o) {
  if (o.num_processes < 1 || o.num_machines < 1 || o.num_processes % o.num_machines != 0) {
    throw Error(fmt::format("launch: --num_processes {} must be a positive multiple of --num_machines {} (it counts "
                            "the processes of all machines)", o.num_processes, o.num_machines));
  }
  if (o.machine_rank < 0 || o.machine_rank >= o.num_machines) {
    throw Error(fmt::format("launch: --machine_rank {} is outside [0, {}]", o.machine_rank, o.num_machines - 1));
  }
  if (o.main_process_port < 1 || o.main_process_port > 65535) {
    throw Error(fmt::format("launch: --main_process_port {} is outside 1..65535", o.main_process_port));
  }
  auto args = o.args;
  const auto path = resolve_app(o.app, args);
  if (o.mixed_precision) {
    bool given = false;
    for (const auto& a : args) given = given || a == "--mixed_precision" || a.rfind("--mixed_precision=", 0) == 0;
    if (!given) {
      args.push_back("--mixed_precision");
      args.push_back(*o.mixed_precision);
    }
  }
  const int local = o.num_processes / o.num_machines;
  // CPU threads: the machine's cores shared between its processes (torchrun sets 1), unless
  // OMP_NUM_THREADS says otherwise; oversubscribed cores slow every process down.
  std::string threads;
  if (const char* given = std::getenv("OMP_NUM_THREADS"); !given || !*given) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    threads = std::to_string(std::max(1u, cores / static_cast<unsigned>(local)));
    if (local > 1) spdlog::info("launch: OMP_NUM_THREADS={} for each process ({} cores, {} processes)", threads, cores, local);
  }
  spdlog::info("launch: {} process(es) on this machine (machine {} of {}), {} in all, rendezvous at {}:{}: {}", local,
               o.machine_rank, o.num_machines, o.num_processes, o.main_process_ip, o.main_process_port, path);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  g_signal = 0;

  std::vector<Child> children(static_cast<std::size_t>(local));
  const auto stop_all = [&](int sig) {
    for (auto& c : children) {
      if (c.running && c.pid > 0) ::kill(c.pid, sig);
    }
  };
  for (int l = 0; l < local; ++l) {
    auto& c = children[static_cast<std::size_t>(l)];
    c.local_rank = l;
    c.rank = o.machine_rank * local + l;
    int fds[2];
    if (::pipe(fds) != 0) throw Error(std::string("launch: pipe: ") + std::strerror(errno));
    const pid_t pid = ::fork();
    if (pid < 0) {
      stop_all(SIGKILL);
      throw Error(std::string("launch: fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
      ::close(fds[0]);
      ::dup2(fds[1], STDOUT_FILENO);
      ::dup2(fds[1], STDERR_FILENO);
      ::close(fds[1]);
      // The launcher supervises: its processes stop on the SIGINT/SIGTERM it forwards, even
      // when it was itself started with those ignored (a background job of a script).
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::setenv("RANK", std::to_string(c.rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(l).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(o.num_processes).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(local).c_str(), 1);
      ::setenv("GROUP_RANK", std::to_string(o.machine_rank).c_str(), 1);
      ::setenv("MASTER_ADDR", o.main_process_ip.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(o.main_process_port).c_str(), 1);
      if (!o.gpu_ids.empty() && o.gpu_ids != "all") ::setenv("CUDA_VISIBLE_DEVICES", o.gpu_ids.c_str(), 1);
      if (!threads.empty() && local > 1) ::setenv("OMP_NUM_THREADS", threads.c_str(), 1);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(path.c_str()));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(path.c_str(), argv.data());
      std::fprintf(stderr, "launch: cannot run %s: %s\n", path.c_str(), std::strerror(errno));
      ::_exit(127);
    }
    ::close(fds[1]);
    ::fcntl(fds[0], F_SETFL, ::fcntl(fds[0], F_GETFL) | O_NONBLOCK);
    c.pid = pid;
    c.out = fds[0];
  }

  int result = 0;
  int first_failed = -1;
  bool stopping = false;
  std::chrono::steady_clock::time_point kill_at{};
  int running = local;
  while (running > 0) {
    if (g_signal && !stopping) {
      spdlog::warn("launch: signal {} received, stopping the processes", static_cast<int>(g_signal));
      stop_all(g_signal == SIGINT ? SIGINT : SIGTERM);
      stopping = true;
      kill_at = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                       std::chrono::duration<double>(o.grace_seconds));
      result = g_signal == SIGINT ? 130 : 143;
    }
    std::vector<pollfd> fds;
    std::vector<Child*> owners;
    for (auto& c : children) {
      if (c.out >= 0) {
        fds.push_back({c.out, POLLIN, 0});
        owners.push_back(&c);
      }
    }
    if (!fds.empty()) {
      ::poll(fds.data(), fds.size(), 100);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto& c = *owners[i];
      char buffer[8192];
      for (;;) {
        const ssize_t n = ::read(c.out, buffer, sizeof buffer);
        if (n > 0) {
          c.pending.append(buffer, static_cast<std::size_t>(n));
          continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          ::close(c.out);
          c.out = -1;
        }
        break;
      }
      emit(c, c.out < 0);
    }
    for (auto& c : children) {
      if (!c.running) continue;
      int status = 0;
      const pid_t r = ::waitpid(c.pid, &status, WNOHANG);
      if (r != c.pid) continue;
      c.running = false;
      c.status = status;
      --running;
      const int code = exit_code_of(status);
      if (code != 0 && first_failed < 0 && !stopping) {
        first_failed = c.rank;
        result = code;
        spdlog::error("launch: rank {} (pid {}) {}; stopping the other processes", c.rank, c.pid, describe_status(status));
        stop_all(SIGTERM);
        stopping = true;
        kill_at = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                         std::chrono::duration<double>(o.grace_seconds));
      }
    }
    if (stopping && running > 0 && std::chrono::steady_clock::now() > kill_at) {
      spdlog::warn("launch: {} process(es) still running after {} s: killing them", running, o.grace_seconds);
      stop_all(SIGKILL);
      kill_at = std::chrono::steady_clock::time_point::max();
    }
  }
  for (auto& c : children) {
    if (c.out >= 0) {
      char buffer[8192];
      ssize_t n;
      while ((n = ::read(c.out, buffer, sizeof buffer)) > 0) c.pending.append(buffer, static_cast<std::size_t>(n));
      ::close(c.out);
      c.out = -1;
    }
    emit(c, true);
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (result == 0) spdlog::info("launch: all {} process(es) finished", local);
  return result;
}

}  // namespace lisadiff::tools
