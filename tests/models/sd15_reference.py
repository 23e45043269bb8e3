"""Reference UNet output of a full-size SD1.5 pipeline folder, for the slow C++ test:
loads <dir>/unet with diffusers, runs one forward pass at a 64x64 latent on seeded inputs and
writes inputs and output to <out>.safetensors. Python is a test tool here."""
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

unet = UNet2DConditionModel.from_pretrained(os.path.join(sys.argv[1], "unet")).eval()
g = torch.Generator().manual_seed(0)
t = {"input.sample": torch.randn(1, 4, 64, 64, generator=g), "input.timesteps": torch.tensor([500]),
     "input.encoder_hidden_states": torch.randn(1, 77, 768, generator=g)}
with torch.no_grad():
    t["output.sample"] = unet(t["input.sample"], t["input.timesteps"], t["input.encoder_hidden_states"]).sample
save_file(t, sys.argv[2], metadata={"format": "pt"})
print("wrote", sys.argv[2])
