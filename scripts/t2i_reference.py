#!/usr/bin/env python3
"""A Python reference of the training loop of diffusers' train_text_to_image.py, written for
lisadiff's parity test (tests/recipes/test_text_to_image_parity.cpp, label python): diffusers
components, torch.optim.AdamW, clip_grad_norm_, get_scheduler, compute_snr, EMAModel and, for
LoRA, peft adapters as train_text_to_image_lora.py adds them, fed the random draws the test
stored, so that both sides see the same numbers.

    t2i_reference.py --pipeline DIR --inputs DIR --out FILE.safetensors

DIR (inputs) holds inputs.safetensors (for micro-batch i: images.i [B,3,R,R] in [-1, 1],
latent_noise.i, noise.i [B,4,h,w], offset_noise.i [B,4,1,1], perturbation.i [B,4,h,w],
timesteps.i [B] int64; init.<name>: LoRA's initial adapters) and settings.json (method full,
lisa (with the active names of every step in `sets`) or lora, steps, accumulation,
learning_rate, lr_scheduler, lr_warmup_steps, max_grad_norm, adam_*, noise_offset,
input_perturbation, snr_gamma (or null), use_ema, lora_rank, texts: one list per micro-batch).

Writes the loss of every micro-batch (losses [M]), the trained tensors (unet.<name>) and, with
use_ema, the EMA shadows (ema.<name>).

The script's step, as here: latents = vae.encode(images).sample() (mean + std * the stored
noise) * scaling_factor; noise, plus noise_offset * a [B, C, 1, 1] draw; with
input_perturbation the latents are noised with noise + p * draw; the target is the noise
(epsilon) or the velocity; the loss is the MSE or, with snr_gamma, the per-sample MSE weighted
by min(snr, gamma) / snr (epsilon) or / (snr + 1); backward of loss / A; at the end of a
window clip_grad_norm_ over the trained parameters, AdamW step, scheduler step, zero_grad, EMA
step.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel, compute_snr  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reflib import Lisa, reference_args  # noqa: E402


def main() -> None:
    args, s, inputs = reference_args(__doc__, None)
    base = args.pipeline
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.train()

    hyper = dict(betas=(s["adam_beta1"], s["adam_beta2"]), weight_decay=s["adam_weight_decay"], eps=s["adam_epsilon"])
    if s["method"] == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        r = s["lora_rank"]
        unet.add_adapter(LoraConfig(r=r, lora_alpha=r, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        # lisadiff's initial adapters (its init equals peft's for the same seed: the LoRA
        # tests' concern), by peft's state-dict names.
        from peft.utils import set_peft_model_state_dict

        init = {k[len("init."):]: v for k, v in inputs.items() if k.startswith("init.")}
        result = set_peft_model_state_dict(unet, init)
        assert not getattr(result, "unexpected_keys", None), result
    trained = [p for p in unet.parameters() if p.requires_grad]
    ema = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config) if s["use_ema"] else None
    optimizer = torch.optim.AdamW(trained, lr=s["learning_rate"], **hyper)
    lr_scheduler = get_scheduler(s["lr_scheduler"], optimizer=optimizer, num_warmup_steps=s["lr_warmup_steps"],
                                 num_training_steps=s["steps"])
    lisa = Lisa(unet, s["sets"], s["learning_rate"], hyper) if s["method"] == "lisa" else None

    def embed(texts):
        ids = tokenizer(texts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids
        return text_encoder(ids, return_dict=False)[0]

    losses = []
    A = s["accumulation"]
    gamma = s["snr_gamma"]
    for step in range(s["steps"]):
        if lisa:
            lisa.begin_step(step)
        for k in range(A):
            i = step * A + k
            with torch.no_grad():
                dist = vae.encode(inputs[f"images.{i}"]).latent_dist
                latents = (dist.mean + dist.std * inputs[f"latent_noise.{i}"]) * vae.config.scaling_factor
                noise = inputs[f"noise.{i}"]
                if s["noise_offset"]:
                    noise = noise + s["noise_offset"] * inputs[f"offset_noise.{i}"]
                if s["input_perturbation"]:
                    new_noise = noise + s["input_perturbation"] * inputs[f"perturbation.{i}"]
                timesteps = inputs[f"timesteps.{i}"].long()
                noisy = noise_scheduler.add_noise(latents, new_noise if s["input_perturbation"] else noise, timesteps)
                encoder_hidden_states = embed(s["texts"][i])
            if noise_scheduler.config.prediction_type == "epsilon":
                target = noise
            else:
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            model_pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
            if gamma is None:
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            else:
                snr = compute_snr(noise_scheduler, timesteps)
                weights = torch.stack([snr, gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
                weights = weights / snr if noise_scheduler.config.prediction_type == "epsilon" else weights / (snr + 1)
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
                loss = (loss.mean(dim=list(range(1, len(loss.shape)))) * weights).mean()
            losses.append(loss.item())
            (loss / A).backward()
        if lisa:
            lisa.finish_step(lr_scheduler.get_last_lr()[0], s["max_grad_norm"])
        else:
            torch.nn.utils.clip_grad_norm_(trained, s["max_grad_norm"])
            optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unet.parameters())

    out = {"losses": torch.tensor(losses, dtype=torch.float64)}
    if s["method"] == "lora":
        from peft.utils import get_peft_model_state_dict

        for name, value in get_peft_model_state_dict(unet).items():
            out[f"lora.{name}"] = value.detach().contiguous()
    else:
        for name, value in unet.named_parameters():
            out[f"unet.{name}"] = value.detach().contiguous()
        if ema is not None:
            for (name, _), shadow in zip(unet.named_parameters(), ema.shadow_params):
                out[f"ema.{name}"] = shadow.detach().contiguous()
    save_file(out, args.out)


if __name__ == "__main__":
    main()
