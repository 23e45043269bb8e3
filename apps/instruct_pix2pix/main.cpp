// instruct_pix2pix: InstructPix2Pix fine-tuning, flag for flag with diffusers'
// train_instruct_pix2pix.py (src/recipes/instruct_pix2pix.h; docs/recipes/instruct_pix2pix.md).
#include "recipes/instruct_pix2pix.h"

int main(int argc, char** argv) {
  using namespace lisadiff::recipes;
  return run_main(instruct_pix2pix_flags(), argc, argv, run_instruct_pix2pix);
}
