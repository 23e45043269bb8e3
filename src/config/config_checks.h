// Validation helpers shared by the config structs. Each throws lisadiff::Error as
// "<source>: field '<key>': expected <what>, found <value>".
#pragma once

#include <string>
#include <vector>

namespace lisadiff::config {

void require_positive(const std::string& source, const std::string& key, int value);
void require_positive(const std::string& source, const std::string& key, double value);
void require_one_of(const std::string& source, const std::string& key, const std::string& value,
                    const std::vector<std::string>& allowed);
void require_odd_kernel(const std::string& source, const std::string& key, int value);
// Every entry of `types` (a block-type list) must be one of `supported`.
void require_block_types(const std::string& source, const std::string& key, const std::vector<std::string>& types,
                         const std::vector<std::string>& supported);
// `key` has `found` entries but must have as many as `other_key` (`expected`).
void require_length(const std::string& source, const std::string& key, std::size_t found, std::size_t expected,
                    const std::string& other_key);
// GroupNorm needs every block's channel count to be a multiple of the group count.
void require_divisible_channels(const std::string& source, const std::vector<int>& block_out_channels, int groups);

}  // namespace lisadiff::config
