// What every fuzz target shares (docs/hardening.md):
// - the contract under test: a reader given any bytes either succeeds or throws
//   lisadiff::Error, whose message names the file and the problem. Any other exception
//   escaping it (a std::out_of_range, a JSON library error, a c10::Error) would reach the user
//   as a message that names nothing, so it is a finding: the target aborts and libFuzzer
//   keeps the input. Memory errors and undefined behaviour are caught by ASan and UBSan.
// - inputs that must be files: written to a per-process folder in /dev/shm (or $TMPDIR).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace lisadiff::fuzz {

// A per-process scratch folder, made on first use and removed at exit.
const std::filesystem::path& scratch_dir();
// Writes `bytes` to scratch_dir()/name and returns the path.
std::filesystem::path write_scratch(const std::string& name, std::string_view bytes);

// Runs `body`; returns normally when it succeeds or throws lisadiff::Error, aborts (a
// finding) on any other exception.
void expect_clean(const char* what, const std::function<void()>& body);

// Splits fuzz input into parts at a separator line "\n--8<--\n" (the seed corpora use it to
// hold several files in one input); at most `max_parts` parts, the last takes the rest.
std::vector<std::string_view> split_parts(std::string_view data, std::size_t max_parts);

// One time setup shared by the targets: quiet logging (warnings about unknown config keys
// would flood the fuzzer's output), one torch thread, images limited to 4 Mpixel.
void init_quietly();

}  // namespace lisadiff::fuzz
