// lcm_distill: latent consistency distillation, flag for flag with diffusers'
// train_lcm_distill_sd_wds.py (src/recipes/lcm_distill.h; docs/recipes/lcm_distill.md).
#include "recipes/lcm_distill.h"

int main(int argc, char** argv) {
  using namespace lisadiff::recipes;
  return run_main(lcm_distill_flags(), argc, argv, run_lcm_distill);
}
