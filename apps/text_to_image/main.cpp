// text_to_image: text-to-image fine-tuning, flag for flag with diffusers'
// train_text_to_image.py (src/recipes/text_to_image.h; docs/recipes/text_to_image.md).
#include "recipes/text_to_image.h"

int main(int argc, char** argv) {
  using namespace lisadiff::recipes;
  return run_main(text_to_image_flags(), argc, argv, run_text_to_image);
}
