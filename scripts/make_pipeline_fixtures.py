#!/usr/bin/env python3
"""Reference fixtures for lisadiff's inference pipelines, made with diffusers 0.42.1 on CPU in
float32 (Python is a tool here, never the product).

  make_pipeline_fixtures.py [--out tests/fixtures/inference]

writes
  tests/fixtures/pipelines/ip2p-micro/   micro-sd with an 8-input-channel UNet (seed 7) and
                                         model_index.json naming StableDiffusionInstructPix2PixPipeline
  <out>/source.png                       the InstructPix2Pix source image (seeded noise, 32 x 32)
  <out>/lora.safetensors                 a rank-2 LoRA for micro-sd in the scripts' diffusers format
  <out>/cases.json                       per case: pipeline folder, scheduler class, prompts,
                                         negative prompts, guidance, steps, eta, seed, size
  <out>/cases.safetensors                per case "<case>.init_latents" (what the seeded CPU
                                         generator draws), "<case>.latents.<i>" after every step
                                         (callback_on_step_end), "<case>.image" (output_type
                                         "np", float32 in [0, 1]) and "<case>.image_u8" (the
                                         uint8 pixels of output_type "pil")

Deterministic: seeded inputs, sorted JSON keys, safetensors metadata {"format": "pt"} only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

REPO = Path(__file__).resolve().parent.parent
PIPES = REPO / "tests" / "fixtures" / "pipelines"

PROMPTS = ["a red circle on a blue background", "a green square"]

# Every case is one pipeline call. "scheduler" is the class built with from_config from the
# folder's scheduler config (as `lisadiff generate --scheduler` does).
CASES = {
    "ddim_cfg": dict(pipe="micro-sd", scheduler="DDIMScheduler", prompts=PROMPTS, guidance=7.5, steps=5,
                     images_per_prompt=2, seed=0),
    "ddim_cfg_negative": dict(pipe="micro-sd", scheduler="DDIMScheduler", prompts=PROMPTS[:1],
                              negative=["blurry dark"], guidance=5.0, steps=4, images_per_prompt=1, seed=3),
    "ddim_eta": dict(pipe="micro-sd", scheduler="DDIMScheduler", prompts=PROMPTS[:1], guidance=7.5, steps=5,
                     eta=0.7, images_per_prompt=2, seed=1),
    "ddim_nocfg": dict(pipe="micro-sd", scheduler="DDIMScheduler", prompts=PROMPTS, guidance=1.0, steps=5,
                       images_per_prompt=1, seed=2),
    "euler_cfg": dict(pipe="micro-sd", scheduler="EulerDiscreteScheduler", prompts=PROMPTS, guidance=7.5,
                      steps=6, images_per_prompt=1, seed=4, height=48, width=32),
    "euler_nocfg": dict(pipe="micro-sd", scheduler="EulerDiscreteScheduler", prompts=PROMPTS[:1], guidance=1.0,
                        steps=5, images_per_prompt=2, seed=5),
    "lcm_1": dict(pipe="lcm-micro", scheduler="LCMScheduler", prompts=PROMPTS, guidance=7.5, steps=1,
                  images_per_prompt=1, seed=6),
    "lcm_2": dict(pipe="lcm-micro", scheduler="LCMScheduler", prompts=PROMPTS, guidance=7.5, steps=2,
                  images_per_prompt=1, seed=6),
    "lcm_4": dict(pipe="lcm-micro", scheduler="LCMScheduler", prompts=PROMPTS[:1], guidance=8.0, steps=4,
                  images_per_prompt=2, seed=7),
    "ip2p_cfg": dict(pipe="ip2p-micro", scheduler="DDIMScheduler", prompts=["turn the circle blue"], guidance=7.0,
                     image_guidance=1.5, steps=5, images_per_prompt=2, seed=8, image="source.png"),
    "ip2p_nocfg": dict(pipe="ip2p-micro", scheduler="EulerDiscreteScheduler", prompts=["make it green"],
                       guidance=1.0, image_guidance=1.5, steps=4, images_per_prompt=1, seed=9, image="source.png"),
    # SD1.5's own PNDM setting (skip_prk_steps: n + 1 model calls), and the Runge-Kutta start.
    "pndm_cfg": dict(pipe="micro-sd", scheduler="PNDMScheduler", prompts=PROMPTS, guidance=7.5, steps=6,
                     images_per_prompt=1, seed=13, scheduler_kwargs=dict(skip_prk_steps=True)),
    "pndm_prk": dict(pipe="micro-sd", scheduler="PNDMScheduler", prompts=PROMPTS[:1], guidance=7.5, steps=4,
                     images_per_prompt=1, seed=16),
    "dpm_cfg": dict(pipe="micro-sd", scheduler="DPMSolverMultistepScheduler", prompts=PROMPTS[:1], guidance=7.5,
                    steps=6, images_per_prompt=2, seed=14),
    "dpm_karras_nocfg": dict(pipe="micro-sd", scheduler="DPMSolverMultistepScheduler", prompts=PROMPTS[:1],
                             guidance=1.0, steps=5, images_per_prompt=1, seed=15, scheduler_kwargs=dict(use_karras_sigmas=True)),
    # micro-sd with lora.safetensors (written below) loaded by load_lora_weights, at scale 0.7.
    "lora_ddim": dict(pipe="micro-sd", scheduler="DDIMScheduler", prompts=PROMPTS[:1], guidance=7.5, steps=4,
                      images_per_prompt=1, seed=10, lora="lora.safetensors", lora_scale=0.7),
}


def make_ip2p_micro() -> Path:
    """micro-sd with an 8-input-channel UNet: InstructPix2Pix's architecture at test size."""
    src, dst = PIPES / "micro-sd", PIPES / "ip2p-micro"
    if dst.exists():
        shutil.rmtree(dst)
    for part in ("scheduler", "text_encoder", "tokenizer", "vae"):
        shutil.copytree(src / part, dst / part)
    config = UNet2DConditionModel.load_config(src / "unet")
    config["in_channels"] = 8
    torch.manual_seed(7)
    unet = UNet2DConditionModel.from_config(config)
    unet.save_pretrained(dst / "unet")
    index = json.loads((src / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInstructPix2PixPipeline"
    (dst / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return dst


def make_source(out: Path) -> Path:
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    path = out / "source.png"
    Image.fromarray(pixels).save(path)
    return path


def make_lora(out: Path) -> Path:
    """A rank-2 LoRA for micro-sd's attention projections with random (non-zero) up weights,
    saved the way the diffusers training scripts save theirs (convert_state_dict_to_diffusers,
    then save_lora_weights): keys "unet.<module>.lora.down.weight" / ".lora.up.weight"."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(PIPES / "micro-sd", safety_checker=None,
                                                   requires_safety_checker=False)
    torch.manual_seed(12)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, weight_name="lora.safetensors",
                                              safe_serialization=True)
    return out / "lora.safetensors"


def run_case(name: str, case: dict, out: Path, tensors: dict) -> None:
    folder = PIPES / case["pipe"]
    is_ip2p = "image" in case
    cls = StableDiffusionInstructPix2PixPipeline if is_ip2p else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = getattr(diffusers, case["scheduler"]).from_config(pipe.scheduler.config,
                                                                       **case.get("scheduler_kwargs", {}))
    pipe.set_progress_bar_config(disable=True)
    if "lora" in case:
        pipe.load_lora_weights(out / case["lora"])
    steps_seen = []

    def record(pipeline, i, t, kwargs):
        tensors[f"{name}.latents.{i}"] = kwargs["latents"].detach().clone().contiguous()
        steps_seen.append(i)
        return {}

    n = len(case["prompts"]) * case["images_per_prompt"]
    kwargs = dict(prompt=case["prompts"], negative_prompt=case.get("negative"), guidance_scale=case["guidance"],
                  num_inference_steps=case["steps"], num_images_per_prompt=case["images_per_prompt"],
                  eta=case.get("eta", 0.0), callback_on_step_end=record)
    if "lora_scale" in case:
        kwargs["cross_attention_kwargs"] = {"scale": case["lora_scale"]}
    vsf = pipe.vae_scale_factor
    if is_ip2p:
        image = Image.open(out / case["image"]).convert("RGB")
        kwargs.update(image=image, image_guidance_scale=case["image_guidance"])
        del kwargs["eta"]
        h, w = image.height, image.width
    else:
        h = case.get("height", 32)
        w = case.get("width", 32)
        kwargs.update(height=h, width=w)
    shape = (n, pipe.vae.config.latent_channels, h // vsf, w // vsf)
    tensors[f"{name}.init_latents"] = torch.randn(shape, generator=torch.Generator().manual_seed(case["seed"]))
    images = []
    for output_type in ("np", "pil"):
        steps_seen.clear()
        result = pipe(generator=torch.Generator().manual_seed(case["seed"]), output_type=output_type, **kwargs)
        images.append(result.images)
    # PNDM calls the model more often than num_inference_steps (its warm-up steps).
    assert steps_seen == list(range(len(pipe.scheduler.timesteps))), steps_seen
    case["loop_steps"] = len(steps_seen)
    tensors[f"{name}.image"] = torch.from_numpy(np.ascontiguousarray(images[0])).float()
    tensors[f"{name}.image_u8"] = torch.from_numpy(np.stack([np.asarray(im) for im in images[1]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "inference")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    make_ip2p_micro()
    make_source(args.out)
    make_lora(args.out)
    tensors: dict[str, torch.Tensor] = {}
    for name, case in CASES.items():
        run_case(name, case, args.out, tensors)
    save_file(dict(sorted(tensors.items())), args.out / "cases.safetensors", metadata={"format": "pt"})
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__.split("+")[0], "cases": CASES,
            "command": "scripts/make_pipeline_fixtures.py"}
    (args.out / "cases.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {len(tensors)} tensors ({size / 1024:.0f} KiB) for {len(CASES)} cases to {args.out}")


if __name__ == "__main__":
    main()
