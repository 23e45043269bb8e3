// LCM distillation, flag for flag with diffusers' train_lcm_distill_sd_wds.py
// (../shared/spec/recipes.md section 2). In progress (issue 16): so far the command line, whose
// flags tests/recipes/test_script_flags.cpp checks against the script's own parser; the step,
// the teacher / online / target models and the executable come next.
#pragma once

#include "recipes/options.h"

namespace lisadiff::recipes {

// Every flag of the script (section 2.1) plus the shared method flags (default lisa).
FlagTable lcm_distill_flags();

}  // namespace lisadiff::recipes
