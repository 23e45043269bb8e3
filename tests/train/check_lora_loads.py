"""Loads micro-sd with diffusers, applies a LoRA file with pipe.load_lora_weights, runs the
UNet on stored inputs and prints the max abs difference from a stored output. Used by
tests/train/test_lora.cpp (Python is a test tool here). argv: pipeline lora_dir reference"""
import json
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])
pipe.load_lora_weights(sys.argv[2])
ref = load_file(sys.argv[3])
with torch.no_grad():
    out = pipe.unet(ref["data.latents"][0], ref["data.timesteps"][0], ref["data.context"][0]).sample
adapters = sum(1 for n, _ in pipe.unet.named_parameters() if "lora_" in n)
print("RESULT " + json.dumps({"max_abs_diff": float((out - ref["train.probe_output"]).abs().max()), "adapter_tensors": adapters}))
