#include "recipes/options.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <iostream>
#include <map>
#include <set>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/exit_codes.h"
#include "core/logging.h"

namespace lisadiff::recipes {

namespace {

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

const char* type_name(FlagType type) {
  switch (type) {
    case FlagType::kSwitch: return "";
    case FlagType::kInt: return "INT";
    case FlagType::kFloat: return "FLOAT";
    case FlagType::kString: return "TEXT";
    case FlagType::kList: return "A,B,...";
    case FlagType::kStrings: return "TEXT [TEXT ...]";
  }
  return "";
}

// The marker of a kStrings flag's values gathered before CLI11 sees them (a JSON list).
constexpr char kGathered = '\x1f';

std::string default_text(const FlagSpec& spec) {
  const auto& d = spec.default_value;
  if (spec.type == FlagType::kSwitch) return "";
  if (d.is_null()) return "None";
  if (d.is_string()) return d.get<std::string>();
  if (d.is_array()) {
    std::string out;
    for (const auto& item : d) out += (out.empty() ? "" : ",") + item.get<std::string>();
    return out;
  }
  return d.dump();
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

config::Json split_list(const std::string& text) {
  config::Json out = config::Json::array();
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto end = std::min(text.find(',', start), text.size());
    auto item = text.substr(start, end - start);
    const auto first = item.find_first_not_of(" \t");
    const auto last = item.find_last_not_of(" \t");
    item = first == std::string::npos ? "" : item.substr(first, last - first + 1);
    if (!item.empty()) out.push_back(item);
    start = end + 1;
  }
  return out;
}

}  // namespace

std::string ParsedArgs::origin(const std::string& key) const {
  for (auto it = origins_.rbegin(); it != origins_.rend(); ++it) {
    if (it->first == key) return it->second;
  }
  return "--" + key;
}

FlagTable::FlagTable(std::string program, std::string description)
    : program_(std::move(program)), description_(std::move(description)) {}

FlagSpec& FlagTable::add(FlagSpec spec) {
  if (spec.name.empty() || spec.name == "config" || spec.name == "help" || find(spec.name)) {
    throw Error(fmt::format("{}: flag '--{}' defined twice or reserved", program_, spec.name));
  }
  if (spec.type == FlagType::kSwitch && spec.default_value.is_null()) spec.default_value = false;
  flags_.push_back(std::move(spec));
  return flags_.back();
}

FlagSpec& FlagTable::add(const std::string& group, const std::string& name, FlagType type, config::Json default_value,
                         const std::string& help) {
  FlagSpec spec;
  spec.group = group;
  spec.name = name;
  spec.type = type;
  spec.default_value = std::move(default_value);
  spec.help = help;
  return add(std::move(spec));
}

const FlagSpec* FlagTable::find(const std::string& name) const {
  for (const auto& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

FlagSpec& FlagTable::existing(const std::string& name) {
  for (auto& f : flags_) {
    if (f.name == name) return f;
  }
  throw Error(fmt::format("{}: no flag '--{}' in the table", program_, name));
}

void FlagTable::set_default(const std::string& name, config::Json default_value) {
  existing(name).default_value = std::move(default_value);
}

void FlagTable::set_handling(const std::string& name, Handling handling, const std::string& note) {
  auto& spec = existing(name);
  spec.handling = handling;
  spec.note = note;
}

std::string FlagTable::nearest(const std::string& name) const {
  std::string best;
  std::size_t best_distance = std::max<std::size_t>(3, name.size() / 3) + 1;
  for (const auto& f : flags_) {
    std::size_t d = edit_distance(name, f.name);
    // A flag that starts with what was typed (argparse's abbreviations) is close too.
    if (name.size() >= 4 && f.name.rfind(name, 0) == 0) d = std::min<std::size_t>(d, 1);
    if (d < best_distance) best_distance = d, best = f.name;
  }
  return best;
}

config::Json FlagTable::convert(const FlagSpec& spec, const std::string& text, const std::string& where) const {
  switch (spec.type) {
    case FlagType::kSwitch:
      if (text == "true" || text == "1" || text.empty()) return true;
      if (text == "false" || text == "0") return false;
      throw UsageError(fmt::format("{}: a switch takes no value (got '{}')", where, text));
    case FlagType::kInt: {
      std::size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(text, &used, 10);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != text.size()) throw UsageError(fmt::format("{}: '{}' is not an integer", where, text));
      return check_json(spec, v, where);
    }
    case FlagType::kFloat: {
      std::size_t used = 0;
      double v = 0;
      try {
        v = std::stod(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != text.size()) throw UsageError(fmt::format("{}: '{}' is not a number", where, text));
      return check_json(spec, v, where);
    }
    case FlagType::kString: return check_json(spec, text, where);
    case FlagType::kList: return check_json(spec, split_list(text), where);
    case FlagType::kStrings:
      if (!text.empty() && text[0] == kGathered) return check_json(spec, config::Json::parse(text.substr(1)), where);
      return check_json(spec, config::Json::array({text}), where);
  }
  return nullptr;
}

config::Json FlagTable::check_json(const FlagSpec& spec, const config::Json& value, const std::string& where) const {
  if (value.is_null()) {
    if (spec.default_value.is_null() && spec.type != FlagType::kSwitch) return value;
    throw UsageError(fmt::format("{}: null is only allowed for a flag whose default is None", where));
  }
  switch (spec.type) {
    case FlagType::kSwitch:
      if (!value.is_boolean()) throw UsageError(fmt::format("{}: expected true or false, got {}", where, config::describe_json(value)));
      return value;
    case FlagType::kInt:
      if (!value.is_number_integer()) throw UsageError(fmt::format("{}: expected an integer, got {}", where, config::describe_json(value)));
      return value;
    case FlagType::kFloat:
      if (!value.is_number() || !std::isfinite(value.get<double>())) {
        throw UsageError(fmt::format("{}: expected a finite number, got {}", where, config::describe_json(value)));
      }
      return value.get<double>();
    case FlagType::kString: {
      if (!value.is_string()) throw UsageError(fmt::format("{}: expected a string, got {}", where, config::describe_json(value)));
      const auto text = value.get<std::string>();
      if (!spec.choices.empty() && std::find(spec.choices.begin(), spec.choices.end(), text) == spec.choices.end()) {
        throw UsageError(fmt::format("{}: '{}' is not one of {}", where, text, joined(spec.choices)));
      }
      return value;
    }
    case FlagType::kStrings: {
      const auto list = value.is_string() ? config::Json::array({value}) : value;
      bool strings = list.is_array() && !list.empty();
      for (const auto& item : list) strings = strings && item.is_string();
      if (!strings) {
        throw UsageError(fmt::format("{}: expected one or more strings, got {}", where, config::describe_json(value)));
      }
      return list;
    }
    case FlagType::kList: {
      const auto list = value.is_string() ? split_list(value.get<std::string>()) : value;
      bool strings = list.is_array();
      for (const auto& item : list) strings = strings && item.is_string();
      if (!strings) {
        throw UsageError(fmt::format("{}: expected a list of strings (or \"a,b\"), got {}", where, config::describe_json(value)));
      }
      return list;
    }
  }
  return value;
}

void FlagTable::apply_handling(const FlagSpec& spec, const config::Json& value, const std::string& where,
                               ParsedArgs& out) const {
  if (spec.handling == Handling::kNote) {
    out.notes.push_back(fmt::format("{}: {}", where, spec.note));
  } else if (spec.handling == Handling::kRefuse && value != spec.default_value) {
    throw UsageError(fmt::format("{}: not supported: {}", where, spec.note));
  }
}

ParsedArgs FlagTable::parse(int argc, const char* const* argv) const {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return parse(args);
}

ParsedArgs FlagTable::parse(const std::vector<std::string>& args) const {
  CLI::App app{description_, program_};
  app.set_help_flag();  // -h/--help handled below, so that it wins over any other problem
  app.allow_extras();
  app.allow_windows_style_options(false);
  std::string config_path;
  auto* config_opt = app.add_option("--config", config_path)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::map<std::string, CLI::Option*> options;
  for (const auto& f : flags_) {
    CLI::Option* opt = nullptr;
    if (f.type == FlagType::kSwitch) {
      opt = app.add_flag("--" + f.name);
    } else {
      opt = app.add_option("--" + f.name)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)->expected(1);
    }
    options[f.name] = opt;
  }
  ParsedArgs out;
  for (const auto& a : args) {
    if (a == "-h" || a == "--help") {
      out.help = true;
      return out;
    }
  }
  // nargs="+" flags: the arguments up to the next --flag become one value (a JSON list).
  std::vector<std::string> gathered;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    const auto* spec = a.rfind("--", 0) == 0 ? find(a.substr(2, a.find('=') == std::string::npos ? std::string::npos
                                                                                                : a.find('=') - 2))
                                              : nullptr;
    if (!spec || spec->type != FlagType::kStrings) {
      gathered.push_back(a);
      continue;
    }
    config::Json list = config::Json::array();
    if (const auto eq = a.find('='); eq != std::string::npos) {
      list.push_back(a.substr(eq + 1));
    } else {
      while (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) list.push_back(args[++i]);
      if (list.empty()) throw UsageError(fmt::format("--{}: expected one or more values", spec->name));
    }
    gathered.push_back("--" + spec->name);
    gathered.push_back(std::string(1, kGathered) + list.dump());
  }
  std::vector<std::string> reversed(gathered.rbegin(), gathered.rend());  // CLI11 takes them last-first
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    throw UsageError(std::string(e.what()));
  }
  for (const auto& extra : app.remaining()) {
    if (extra.rfind("--", 0) == 0 || (extra.size() > 1 && extra[0] == '-' && !std::isdigit(static_cast<unsigned char>(extra[1])))) {
      std::string name = extra.substr(extra.find_first_not_of('-'));
      name = name.substr(0, name.find('='));
      const auto suggestion = nearest(name);
      throw UsageError(fmt::format("unknown flag '--{}'{}", name,
                                   suggestion.empty() ? " (see --help)" : " (did you mean --" + suggestion + "?)"));
    }
    throw UsageError(fmt::format("unexpected argument '{}': every input is a --flag (see --help)", extra));
  }

  // The config file first...
  if (config_opt->count() > 0) {
    out.config_file = config_path;
    const auto json = config::read_json_file(out.config_file);
    if (!json.is_object()) throw UsageError(config_path, "a config file holds one JSON object of flag names and values");
    for (auto it = json.begin(); it != json.end(); ++it) {
      if (!it.key().empty() && it.key()[0] == '_') continue;
      const auto where = fmt::format("{}: key '{}'", config_path, it.key());
      const auto* spec = find(it.key());
      if (!spec) {
        const auto suggestion = nearest(it.key());
        throw UsageError(fmt::format("{}: not a flag of {}{}", where, program_,
                                     suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"));
      }
      auto value = check_json(*spec, it.value(), where);
      apply_handling(*spec, value, where, out);
      out.values[it.key()] = std::move(value);
      out.origins_.emplace_back(it.key(), where);
    }
  }
  // ...then the command line over it.
  for (const auto& f : flags_) {
    auto* opt = options.at(f.name);
    if (opt->count() == 0) continue;
    const auto where = "--" + f.name;
    config::Json value;
    if (f.type == FlagType::kSwitch) {
      const auto results = opt->results();
      value = convert(f, results.empty() ? "" : results.back(), where);
    } else {
      value = convert(f, opt->as<std::string>(), where);
    }
    apply_handling(f, value, where, out);
    out.values[f.name] = std::move(value);
    out.origins_.emplace_back(f.name, where);
  }
  for (const auto& f : flags_) {
    if (f.required && !out.values.contains(f.name)) {
      throw UsageError(fmt::format("--{} is required ({})", f.name, f.help));
    }
  }
  return out;
}

std::string FlagTable::help() const {
  CLI::App app{description_, program_};
  app.set_help_flag("-h,--help", "print this help and exit");
  app.add_option("--config", "a JSON file of flag names and values; the command line overrides it")
      ->type_name("FILE")
      ->group("Config");
  for (const auto& f : flags_) {
    std::string text = f.help;
    if (!f.choices.empty()) text += " (" + joined(f.choices) + ")";
    if (f.handling != Handling::kNormal) text += (text.empty() ? "" : ". ") + std::string("lisadiff: ") + f.note;
    if (f.required) text += " [required]";
    CLI::Option* opt = f.type == FlagType::kSwitch ? app.add_flag("--" + f.name) : app.add_option("--" + f.name);
    opt->description(text);
    opt->group(f.group.empty() ? "Options" : f.group);
    if (f.type != FlagType::kSwitch) opt->type_name(type_name(f.type))->default_str(default_text(f));
  }
  app.get_formatter()->column_width(44);
  return app.help();
}

config::Json FlagTable::defaults_json() const {
  config::Json out = config::Json::object();
  for (const auto& f : flags_) out[f.name] = f.default_value;
  return out;
}

int run_main(const FlagTable& table, int argc, const char* const* argv, const std::function<void(const ParsedArgs&)>& run) {
  ParsedArgs parsed;
  try {
    parsed = table.parse(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << table.program() << ": error: " << e.what() << "\n";
    return exit_code::kUsage;
  } catch (const std::exception& e) {
    std::cerr << table.program() << ": error: " << e.what() << "\n";
    return exit_code::kError;
  }
  if (parsed.help) {
    std::cout << table.help();
    return exit_code::kOk;
  }
  try {
    init_logging("info");
    for (const auto& note : parsed.notes) spdlog::info("note: {}", note);
    run(parsed);
    return exit_code::kOk;
  } catch (const UsageError& e) {
    spdlog::error("{}", e.what());
    return exit_code::kUsage;
  } catch (const c10::Error& e) {
    // A failure inside PyTorch: its message, without the C++ stack trace what() carries.
    spdlog::error("{}", e.what_without_backtrace());
    return exit_code::kError;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kError;
  }
}

}  // namespace lisadiff::recipes
