// The command line of the recipe executables, shared by all of them: every flag of the
// diffusers script a recipe follows, with the script's name, type and default, in a table
// (FlagTable) from which the parser, the config-file reader and --help are made.
//
//   recipe --flag value --flag=value --switch ... [--config FILE.json]
//
// - A value flag takes the last value given (argparse's store); a switch (store_true) is true
//   when given. Both spellings `--flag value` and `--flag=value` work.
// - `--config FILE.json`: an object whose keys are flag names (without "--") and whose values
//   have the flag's type (a number for int/float flags, a string, true/false for switches,
//   null for a flag whose default is None). Flags given on the command line override it.
//   Keys starting with "_" are comments.
// - Flags of the Python/Hub world are in the table too, so that the original commands run as
//   written: a flag that cannot mean anything here is accepted with a one-line note when
//   given (Handling::kNote), or refused with the reason (Handling::kRefuse, e.g.
//   --push_to_hub).
// - An unknown flag, a value of the wrong type or outside the flag's choices, a config key
//   that names no flag: a UsageError (exit code 2) naming the flag or the file and key, with
//   the nearest flag name for a typo.
//
// The result is one JSON object holding the keys given (config file, then the command line
// over it), read by config::FieldReader into typed options whose defaults are the scripts'
// (train::TrainerOptions::read, data::DataOptions::read and the recipe's own). `FlagTable::
// defaults_json()` gives the table's defaults in the same form, so that a test can check that
// the table's --help defaults and the readers' defaults agree.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "config/json_fields.h"
#include "core/error.h"
#include "core/usage_error.h"

namespace lisadiff::recipes {

// A command-line or config-file mistake: exit code 2 (core/exit_codes.h).
using lisadiff::UsageError;

// kList: comma-separated on the command line ("to_q,to_k"), a list of strings (or that
// comma-separated string) in a config file; parsed as a JSON list of strings.
// kStrings: argparse's nargs="+" (--validation_prompts "a cat" "a dog, at night"): every
// argument up to the next --flag is one string, commas included; in a config file a list of
// strings or one string.
enum class FlagType { kSwitch, kInt, kFloat, kString, kList, kStrings };

enum class Handling {
  kNormal,  // lisadiff does what the flag says
  kNote,    // accepted; when given, `note` is printed once (it has no effect here, or a mapped one)
  kRefuse,  // refused when given with anything but its default, with `note` as the reason
};

struct FlagSpec {
  std::string name;  // without the leading "--"
  FlagType type = FlagType::kString;
  config::Json default_value;  // null: argparse's None (or false for a switch)
  std::string help;
  std::string group;                 // the --help section
  std::vector<std::string> choices;  // allowed values of a string flag; empty: any
  Handling handling = Handling::kNormal;
  std::string note;
  bool required = false;  // argparse required=True
};

// What parse() found.
struct ParsedArgs {
  config::Json values = config::Json::object();  // the keys given: config file, then command line
  std::vector<std::string> notes;                 // one line per given kNote flag
  bool help = false;                              // --help / -h was given: print help(), exit 0
  std::filesystem::path config_file;
  // Where each key came from, for messages: "--flag" or "FILE.json: key 'flag'".
  std::string origin(const std::string& key) const;

 private:
  friend class FlagTable;
  std::vector<std::pair<std::string, std::string>> origins_;
};

class FlagTable {
 public:
  FlagTable(std::string program, std::string description);

  // Adds a flag (throws lisadiff::Error for a name already there: a programming error).
  FlagSpec& add(FlagSpec spec);
  // Shorthands for the common cases.
  FlagSpec& add(const std::string& group, const std::string& name, FlagType type, config::Json default_value,
                const std::string& help);
  // Changes the default of a flag already in the table (a recipe's own default for a shared flag).
  void set_default(const std::string& name, config::Json default_value);
  // Marks a flag of the Python/Hub world (see Handling).
  void set_handling(const std::string& name, Handling handling, const std::string& note);

  const FlagSpec* find(const std::string& name) const;
  const std::vector<FlagSpec>& flags() const { return flags_; }
  const std::string& program() const { return program_; }

  // The table's flag name closest to `name` (edit distance), or "" when none is close.
  std::string nearest(const std::string& name) const;

  // Parses argv[1..] (the program name excluded). Throws UsageError; reads the config file
  // (lisadiff::Error, exit 1, when it cannot be read or is not JSON).
  ParsedArgs parse(const std::vector<std::string>& args) const;
  ParsedArgs parse(int argc, const char* const* argv) const;

  // The --help text: usage, then the flags group by group (in the order groups first appear),
  // each with its type, default and help.
  std::string help() const;

  // Every flag's default as parse() would give it: switches false, None as null.
  config::Json defaults_json() const;

 private:
  FlagSpec& existing(const std::string& name);  // throws lisadiff::Error for an unknown name
  config::Json convert(const FlagSpec& spec, const std::string& text, const std::string& where) const;
  config::Json check_json(const FlagSpec& spec, const config::Json& value, const std::string& where) const;
  void apply_handling(const FlagSpec& spec, const config::Json& value, const std::string& where,
                      ParsedArgs& out) const;

  std::string program_, description_;
  std::vector<FlagSpec> flags_;
};

// Runs a recipe's main: parses, prints --help or the notes, calls `run(parsed)`, and turns
// the outcome into an exit code (0; 1 for lisadiff::Error and other failures; 2 for
// UsageError). What every recipe executable's main() calls.
int run_main(const FlagTable& table, int argc, const char* const* argv, const std::function<void(const ParsedArgs&)>& run);

}  // namespace lisadiff::recipes
