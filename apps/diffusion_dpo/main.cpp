// diffusion_dpo: Diffusion-DPO preference tuning, flag for flag with diffusers'
// train_diffusion_dpo.py (src/recipes/diffusion_dpo.h; docs/recipes/diffusion_dpo.md).
#include "recipes/diffusion_dpo.h"

int main(int argc, char** argv) {
  using namespace lisadiff::recipes;
  return run_main(diffusion_dpo_flags(), argc, argv, run_diffusion_dpo);
}
