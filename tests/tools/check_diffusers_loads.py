"""Loads a pipeline folder with diffusers' StableDiffusionPipeline.from_pretrained, runs one
denoising step, and prints JSON with the tensor counts it sees and whether the output is
finite. Used by tests/tools/test_init_pipeline.cpp (Python is a test tool here)."""
import json
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402
from diffusers.utils import logging  # noqa: E402

logging.disable_progress_bar()
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
size = pipe.unet.config.sample_size * pipe.vae_scale_factor
image = pipe("a red circle on a blue background", num_inference_steps=1, output_type="np",
             generator=torch.Generator().manual_seed(0), height=min(size, 64), width=min(size, 64)).images
counts = {name: len(getattr(pipe, name).state_dict()) for name in ("unet", "vae", "text_encoder")}
print("RESULT " + json.dumps({"counts": counts, "finite": bool(torch.isfinite(torch.from_numpy(image)).all()),
                  "shape": list(image.shape), "tokens": pipe.tokenizer("a red circle").input_ids}))
