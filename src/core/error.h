// lisadiff::Error: the one exception type that src/ throws for bad input or failed I/O.
// Its message always says where (file, and tensor/field/key when there is one) and what is
// wrong, so that the boundary (an app's main) can print it as is and exit non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace lisadiff {

class Error : public std::runtime_error {
 public:
  // "<problem>", for errors that concern no file.
  explicit Error(const std::string& problem);
  // "<file>: <problem>".
  Error(std::string file, const std::string& problem);
  // "<file>: <key>: <problem>"; key names the item, e.g. "tensor 'conv_in.weight'" or
  // "field 'layers_per_block'".
  Error(std::string file, std::string key, const std::string& problem);

  const std::string& file() const { return file_; }
  const std::string& key() const { return key_; }
  const std::string& problem() const { return problem_; }

 private:
  std::string file_;
  std::string key_;
  std::string problem_;
};

// Human-readable names used in messages: "tensor 'x'", "field 'y'".
std::string tensor_key(const std::string& name);
std::string field_key(const std::string& name);

}  // namespace lisadiff
