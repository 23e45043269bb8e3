#!/usr/bin/env python3
"""Reference fixtures for lisadiff's noise schedulers, made with diffusers (Python is a tool
here, never the product).

  make_scheduler_fixtures.py [--out tests/fixtures/schedulers]

writes
  ddpm.json           the cases: a scheduler config each (diffusers' DDPMScheduler keys)
  ddpm.safetensors    per case "<case>.betas", "<case>.alphas_cumprod" (float32, as diffusers
                      builds them), and the forward process on seeded inputs:
                      "<case>.x0", "<case>.noise", "<case>.t" (int64), "<case>.noisy"
                      (add_noise), "<case>.velocity" (get_velocity), in float32, plus
                      "<case>.fp16.noisy" / "<case>.fp16.velocity" from float16 inputs.
  sampling.json       the sampling cases: per scheduler ("ddim", "euler", "lcm", "pndm", "dpm") a config each
                      (a diffusers scheduler_config.json, read with that class's defaults, as
                      <Class>.from_config does) and the loop's settings; the LCM DDIM solver
                      cases and the helper inputs
  sampling.safetensors
                      per scheduler case "<sched>.<case>.timesteps.<n>" for several step counts,
                      and a sampling loop fed with seeded fake model outputs: "<...>.x_init",
                      "<...>.model_output.<i>", "<...>.prev_sample.<i>",
                      "<...>.pred_original_sample.<i>" (LCM: "<...>.denoised.<i>"), the noise the
                      step drew ("<...>.noise.<i>", where it draws), Euler's "<...>.sigmas.<n>",
                      "<...>.init_noise_sigma.<n>" and "<...>.model_input.<i>" (scale_model_input);
                      "lcm_solver.<case>.*": the LCM distillation script's DDIMSolver (written
                      out below from the script's formula, recipes.md 2.4) and a ddim_step;
                      "helpers.*": LCM boundary scalings, guidance-scale embeddings, x0 and eps
                      from a model output per prediction type (recipes.md 2.5).

  dpm_scheduler_config.json
                      DPMSolverMultistepScheduler's own scheduler_config.json with one key set, as
                      diffusers writes it (lambda_min_clipped: -Infinity, which is not JSON).

Deterministic: seeded inputs, sorted JSON keys, safetensors metadata {"format": "pt"} only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)
from safetensors.torch import save_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

CASES = {
    # SD1.5's scheduler/scheduler_config.json, as the scripts read it (recipes.md 6.1).
    "sd15": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon"),
    "ddpm_default": dict(),
    "cosine_v": dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
    "zero_snr": dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", rescale_betas_zero_snr=True,
                     prediction_type="v_prediction"),
    "trained_16": dict(num_train_timesteps=16, trained_betas=[round(0.01 + 0.02 * i, 6) for i in range(16)]),
}


# ---------------------------------------------------------------------------------------------
# Sampling schedulers (DDIM, Euler, LCM) and the LCM distillation helpers.

# SD1.5's scheduler/scheduler_config.json as the model repository ships it (recipes.md 6.1):
# no prediction_type and no timestep_spacing, so each class fills in its own defaults.
SD15_FILE = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SD15_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SAMPLE_SHAPE = (2, 4, 3, 3)

# Each case: the config, the step counts whose timesteps are stored, and one loop ("steps",
# plus the step() arguments the loop passes).
DDIM_CASES = {
    "sd15": dict(config=SD15_FILE, schedules=[1, 3, 7, 10, 50, 1000], steps=5),
    "trailing_v_zero_snr": dict(
        config=dict(**SD15_BETAS, clip_sample=False, timestep_spacing="trailing", prediction_type="v_prediction",
                    rescale_betas_zero_snr=True),
        schedules=[1, 3, 7, 10, 50], steps=4),
    # DDIM's own defaults (linear betas, clip_sample true), x0 prediction clipped to 0.8, eta > 0.
    "linspace_sample_eta": dict(
        config=dict(timestep_spacing="linspace", prediction_type="sample", clip_sample_range=0.8),
        schedules=[1, 3, 7, 10, 50], steps=6, eta=0.7, use_clipped_model_output=True),
    "thresholding_cosine": dict(
        config=dict(beta_schedule="squaredcos_cap_v2", thresholding=True, dynamic_thresholding_ratio=0.9,
                    sample_max_value=1.5, steps_offset=1),
        schedules=[3, 10], steps=5),
}

EULER_CASES = {
    # Read as EulerDiscreteScheduler: timestep_spacing "linspace" (the class default).
    "sd15": dict(config=SD15_FILE, schedules=[1, 3, 7, 10, 50], steps=5),
    "sd15_leading": dict(config={**SD15_FILE, "timestep_spacing": "leading"}, schedules=[1, 3, 7, 10, 50], steps=5),
    "karras_v_trailing": dict(
        config=dict(**SD15_BETAS, use_karras_sigmas=True, prediction_type="v_prediction", timestep_spacing="trailing"),
        schedules=[1, 3, 7, 10, 50], steps=6),
    "karras_bounds_sigma_min": dict(
        config=dict(**SD15_BETAS, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0, final_sigmas_type="sigma_min",
                    timestep_spacing="leading", steps_offset=1),
        schedules=[3, 10], steps=4),
    "log_linear_zero_snr_v": dict(
        config=dict(**SD15_BETAS, interpolation_type="log_linear", rescale_betas_zero_snr=True,
                    prediction_type="v_prediction", timestep_spacing="trailing"),
        schedules=[3, 10], steps=5),
    "continuous_v": dict(
        config=dict(**SD15_BETAS, timestep_type="continuous", prediction_type="v_prediction"),
        schedules=[3, 10], steps=4),
    "sample_prediction": dict(config=dict(prediction_type="sample"), schedules=[3], steps=3),
    # Stochastic Euler ("churn"): noise is drawn where s_tmin <= sigma <= s_tmax.
    "churn": dict(config=SD15_FILE, schedules=[4], steps=4, s_churn=1.0, s_tmin=0.5, s_noise=1.003),
}

LCM_CASES = {
    # Read as LCMScheduler, as the distillation script's validation does.
    "sd15": dict(config=SD15_FILE, schedules=[1, 2, 3, 4, 8, 50], steps=4),
    "v_zero_snr_clip": dict(
        config=dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", clip_sample=True,
                    clip_sample_range=1.5, original_inference_steps=30, timestep_scaling=5.0),
        schedules=[1, 2, 3, 7, 30], steps=3),
    "sample_thresholding": dict(
        config=dict(**SD15_BETAS, prediction_type="sample", thresholding=True, dynamic_thresholding_ratio=0.95,
                    sample_max_value=2.0, set_alpha_to_one=False),
        schedules=[2, 5], steps=5, original_inference_steps=100),
}

PNDM_CASES = {
    # Read as PNDMScheduler: SD1.5's own scheduler (PLMS, leading + steps_offset 1).
    "sd15": dict(config=SD15_FILE, schedules=[1, 2, 3, 10, 25, 50], steps=10),
    "sd15_one_step": dict(config=SD15_FILE, schedules=[1], steps=1),
    "sd15_two_steps": dict(config=SD15_FILE, schedules=[2], steps=2),
    "v_trailing": dict(config={**SD15_FILE, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
                       schedules=[1, 2, 10, 25, 50], steps=7),
    "linspace_alpha_one": dict(config={**SD15_FILE, "timestep_spacing": "linspace", "set_alpha_to_one": True},
                               schedules=[1, 2, 10, 25, 50], steps=6),
    # F-PNDM: 12 Runge-Kutta evaluations, then PLMS (PNDM's own defaults: linear betas).
    "prk": dict(config=dict(skip_prk_steps=False, steps_offset=1), schedules=[4, 10, 25, 50], steps=10),
    "prk_v_linspace": dict(config={**SD15_BETAS, "skip_prk_steps": False, "prediction_type": "v_prediction",
                                   "timestep_spacing": "linspace"}, schedules=[4, 10], steps=5),
}

DPM_CASES = {
    # Read as DPMSolverMultistepScheduler: dpmsolver++ order 2 midpoint, linspace spacing; 16
    # steps take the >= 15 path of lower_order_final.
    "sd15": dict(config=SD15_FILE, schedules=[1, 2, 10, 25, 50], steps=16),
    "sd15_short": dict(config=SD15_FILE, schedules=[3], steps=3),
    "karras_v": dict(config=dict(**SD15_BETAS, use_karras_sigmas=True, prediction_type="v_prediction"),
                     schedules=[1, 2, 10, 25, 50], steps=8),
    "karras_bounds": dict(config=dict(**SD15_BETAS, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0,
                                      timestep_spacing="leading", steps_offset=1),
                          schedules=[2, 10], steps=5),
    "order1_leading": dict(config={**SD15_FILE, "solver_order": 1, "timestep_spacing": "leading"},
                           schedules=[1, 2, 10, 25, 50], steps=5),
    "heun_sigma_min_trailing": dict(
        config=dict(**SD15_BETAS, solver_type="heun", lower_order_final=False, final_sigmas_type="sigma_min",
                    timestep_spacing="trailing"),
        schedules=[1, 2, 10, 25, 50], steps=6),
    "euler_at_final_no_lower": dict(config=dict(**SD15_BETAS, lower_order_final=False, euler_at_final=True),
                                    schedules=[10], steps=6),
    "order3_zero_snr_v": dict(config=dict(**SD15_BETAS, solver_order=3, rescale_betas_zero_snr=True,
                                          prediction_type="v_prediction", timestep_spacing="trailing"),
                              schedules=[2, 10, 25], steps=7),
    "dpmsolver_midpoint_sample": dict(
        config=dict(**SD15_BETAS, algorithm_type="dpmsolver", final_sigmas_type="sigma_min", prediction_type="sample"),
        schedules=[2, 10], steps=5),
    "dpmsolver_heun_order3_thresholding": dict(
        config=dict(algorithm_type="dpmsolver", solver_type="heun", solver_order=3, final_sigmas_type="sigma_min",
                    thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
        schedules=[10], steps=6),
    "thresholding_sample": dict(config=dict(**SD15_BETAS, prediction_type="sample", thresholding=True,
                                            dynamic_thresholding_ratio=0.9, sample_max_value=1.2),
                                schedules=[4], steps=4),
    # The cosine schedule: Karras timesteps are not rounded (then truncated to int64). Schedules
    # only (steps 0): diffusers' Karras sigmas ignore lambda_min_clipped and repeat timestep 998,
    # so its own loop looks the first one up at index 1 and runs past the end.
    "cosine_karras_clipped": dict(config=dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
                                              use_karras_sigmas=True), schedules=[2, 10, 25], steps=0),
    # The cosine schedule with lambda clipped: the spacing ends below 1000.
    "cosine_clipped_leading": dict(config=dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
                                               timestep_spacing="leading"), schedules=[2, 10, 25], steps=5),
}

LCM_SOLVER_CASES = {
    "sd15": dict(config=SD15_BETAS, num_ddim_timesteps=50),
    "cosine_40": dict(config=dict(beta_schedule="squaredcos_cap_v2"), num_ddim_timesteps=40),
}


class ReferenceDDIMSolver:
    """The LCM distillation script's DDIMSolver (recipes.md 2.4), written out here.

    Kept as the script builds it: alpha_cumprods_prev is float64 (the script assembles it from
    a Python list), so ddim_step computes in float64 for float32 inputs."""

    def __init__(self, alphas_cumprod: np.ndarray, num_train_timesteps: int, num_ddim_timesteps: int):
        k = num_train_timesteps // num_ddim_timesteps
        grid = (np.arange(1, num_ddim_timesteps + 1) * k).round().astype(np.int64) - 1
        self.timesteps = torch.from_numpy(grid)
        self.alpha_cumprods = torch.from_numpy(alphas_cumprod[grid])
        prev = [alphas_cumprod[0]] + alphas_cumprod[grid[:-1]].tolist()
        self.alpha_cumprods_prev = torch.from_numpy(np.asarray(prev))

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        a_prev = self.alpha_cumprods_prev.gather(-1, index).reshape(-1, *([1] * (x0.dim() - 1)))
        return a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps


def boundary_scalings(t: torch.Tensor, timestep_scaling: float, sigma_data: float = 0.5):
    """c_skip, c_out of the consistency boundary condition (the script's formula)."""
    s = timestep_scaling * t
    return sigma_data**2 / (s**2 + sigma_data**2), s / (s**2 + sigma_data**2) ** 0.5


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of 1000 w, sin half first (recipes.md 2.5 step 4)."""
    half = dim // 2
    freq = torch.log(torch.tensor(10000.0)) / (half - 1)
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -freq)
    arg = (w * 1000.0).to(torch.float32)[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def x0_and_eps(out, t, z, prediction_type, alphas, sigmas):
    """x0 and eps from a model output (recipes.md 2.5 steps 5-6)."""
    a = alphas.gather(-1, t).reshape(-1, *([1] * (z.dim() - 1)))
    s = sigmas.gather(-1, t).reshape(-1, *([1] * (z.dim() - 1)))
    if prediction_type == "epsilon":
        return (z - s * out) / a, out
    if prediction_type == "sample":
        return out, (z - a * out) / s
    return a * z - s * out, a * out + s * z


def seeded(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(sum(map(ord, name)))


def ddim_fixture(name: str, case: dict, tensors: dict) -> None:
    key = f"ddim.{name}"
    s = DDIMScheduler.from_config(case["config"])
    for n in case["schedules"]:
        s.set_timesteps(n)
        tensors[f"{key}.timesteps.{n}"] = s.timesteps.clone()
    g = seeded(key)
    s.set_timesteps(case["steps"])
    x = torch.randn(SAMPLE_SHAPE, generator=g)
    tensors[f"{key}.x_init"] = x.clone()
    eta = case.get("eta", 0.0)
    for i, t in enumerate(s.timesteps):
        out = torch.randn(SAMPLE_SHAPE, generator=g)
        noise = torch.randn(SAMPLE_SHAPE, generator=g) if eta > 0 else None
        res = s.step(out, t, x, eta=eta, use_clipped_model_output=case.get("use_clipped_model_output", False),
                     variance_noise=noise)
        tensors[f"{key}.model_output.{i}"] = out
        if noise is not None:
            tensors[f"{key}.noise.{i}"] = noise
        tensors[f"{key}.prev_sample.{i}"] = res.prev_sample
        tensors[f"{key}.pred_original_sample.{i}"] = res.pred_original_sample
        x = res.prev_sample


def euler_fixture(name: str, case: dict, tensors: dict) -> None:
    key = f"euler.{name}"
    s = EulerDiscreteScheduler.from_config(case["config"])
    for n in case["schedules"]:
        s.set_timesteps(n)
        tensors[f"{key}.timesteps.{n}"] = s.timesteps.clone()
        tensors[f"{key}.sigmas.{n}"] = s.sigmas.clone()
        tensors[f"{key}.init_noise_sigma.{n}"] = torch.as_tensor(s.init_noise_sigma, dtype=torch.float32).reshape(1)
    g = seeded(key)
    s.set_timesteps(case["steps"])
    x = torch.randn(SAMPLE_SHAPE, generator=g)
    tensors[f"{key}.x_init"] = x.clone()
    x = x * s.init_noise_sigma
    churn = {k: case[k] for k in ("s_churn", "s_tmin", "s_noise") if k in case}
    # The step draws its churn noise from this generator; a twin replays the draws so that the
    # test can also pass them explicitly.
    step_gen, twin = seeded(key + ".noise"), seeded(key + ".noise")
    for i, t in enumerate(s.timesteps):
        out = torch.randn(SAMPLE_SHAPE, generator=g)
        tensors[f"{key}.model_input.{i}"] = s.scale_model_input(x, t)
        if case.get("s_churn", 0.0) > 0 and case.get("s_tmin", 0.0) <= s.sigmas[s.step_index]:
            tensors[f"{key}.noise.{i}"] = torch.randn(SAMPLE_SHAPE, generator=twin)
        res = s.step(out, t, x, generator=step_gen, **churn)
        tensors[f"{key}.model_output.{i}"] = out
        tensors[f"{key}.prev_sample.{i}"] = res.prev_sample
        tensors[f"{key}.pred_original_sample.{i}"] = res.pred_original_sample
        x = res.prev_sample


def lcm_fixture(name: str, case: dict, tensors: dict) -> None:
    key = f"lcm.{name}"
    s = LCMScheduler.from_config(case["config"])
    original = case.get("original_inference_steps")
    for n in case["schedules"]:
        s.set_timesteps(n, original_inference_steps=original)
        tensors[f"{key}.timesteps.{n}"] = s.timesteps.clone()
    g = seeded(key)
    s.set_timesteps(case["steps"], original_inference_steps=original)
    x = torch.randn(SAMPLE_SHAPE, generator=g)
    tensors[f"{key}.x_init"] = x.clone()
    step_gen, twin = seeded(key + ".noise"), seeded(key + ".noise")
    for i, t in enumerate(s.timesteps):
        out = torch.randn(SAMPLE_SHAPE, generator=g)
        if i + 1 < len(s.timesteps):
            tensors[f"{key}.noise.{i}"] = torch.randn(SAMPLE_SHAPE, generator=twin)
        res = s.step(out, t, x, generator=step_gen)
        tensors[f"{key}.model_output.{i}"] = out
        tensors[f"{key}.prev_sample.{i}"] = res.prev_sample
        tensors[f"{key}.denoised.{i}"] = res.denoised
        x = res.prev_sample


def plain_loop_fixture(key: str, s, case: dict, tensors: dict, sigmas: bool = False) -> None:
    """Timesteps (and sigmas) per step count, and a loop that stores prev_sample only (PNDM and
    DPM-Solver return nothing else). steps 0: schedules only."""
    for n in case["schedules"]:
        s.set_timesteps(n)
        tensors[f"{key}.timesteps.{n}"] = s.timesteps.clone()
        if sigmas:
            tensors[f"{key}.sigmas.{n}"] = s.sigmas.clone()
    if case["steps"] == 0:
        return
    g = seeded(key)
    s.set_timesteps(case["steps"])
    x = torch.randn(SAMPLE_SHAPE, generator=g)
    tensors[f"{key}.x_init"] = x.clone()
    for i, t in enumerate(s.timesteps):
        out = torch.randn(SAMPLE_SHAPE, generator=g)
        res = s.step(out, t, x)
        tensors[f"{key}.model_output.{i}"] = out
        tensors[f"{key}.prev_sample.{i}"] = res.prev_sample
        x = res.prev_sample


def lcm_solver_fixture(name: str, case: dict, tensors: dict) -> None:
    key = f"lcm_solver.{name}"
    ddpm = DDPMScheduler(**case["config"])
    n = ddpm.config.num_train_timesteps
    solver = ReferenceDDIMSolver(ddpm.alphas_cumprod.numpy(), n, case["num_ddim_timesteps"])
    tensors[f"{key}.ddim_timesteps"] = solver.timesteps
    tensors[f"{key}.alpha_cumprods"] = solver.alpha_cumprods
    tensors[f"{key}.alpha_cumprods_prev"] = solver.alpha_cumprods_prev
    g = seeded(key)
    x0, eps = torch.randn(4, 4, 3, 3, generator=g), torch.randn(4, 4, 3, 3, generator=g)
    index = torch.tensor([0, case["num_ddim_timesteps"] - 1, 7, 3])
    tensors[f"{key}.x0"], tensors[f"{key}.eps"], tensors[f"{key}.index"] = x0, eps, index
    tensors[f"{key}.x_prev"] = solver.ddim_step(x0, eps, index)


def helpers_fixture(tensors: dict) -> dict:
    t = torch.tensor([0, 1, 19, 39, 259, 499, 759, 979, 999])
    tensors["helpers.boundary.t"] = t
    for scaling in (10.0, 5.0):
        c_skip, c_out = boundary_scalings(t, scaling)
        tensors[f"helpers.boundary.{scaling:g}.c_skip"], tensors[f"helpers.boundary.{scaling:g}.c_out"] = c_skip, c_out
    w = torch.tensor([5.0, 6.5, 15.0, 1.0, 7.25])
    tensors["helpers.w"] = w
    for dim in (256, 7):
        tensors[f"helpers.w_emb.{dim}"] = guidance_embedding(w, dim)
    ddpm = DDPMScheduler(**SD15_BETAS)
    alphas, sigmas = torch.sqrt(ddpm.alphas_cumprod), torch.sqrt(1 - ddpm.alphas_cumprod)
    g = seeded("helpers")
    z, out = torch.randn(3, 4, 3, 3, generator=g), torch.randn(3, 4, 3, 3, generator=g)
    steps = torch.tensor([999, 0, 259])
    tensors["helpers.z"], tensors["helpers.model_output"], tensors["helpers.t"] = z, out, steps
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        x0, eps = x0_and_eps(out, steps, z, prediction_type, alphas, sigmas)
        tensors[f"helpers.{prediction_type}.x0"], tensors[f"helpers.{prediction_type}.eps"] = x0, eps
    return {"alphas_cumprod_config": SD15_BETAS, "boundary_scalings": [10.0, 5.0], "embedding_dims": [256, 7],
            "prediction_types": ["epsilon", "sample", "v_prediction"]}


def write_sampling(out: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, case in DDIM_CASES.items():
        ddim_fixture(name, case, tensors)
    for name, case in EULER_CASES.items():
        euler_fixture(name, case, tensors)
    for name, case in LCM_CASES.items():
        lcm_fixture(name, case, tensors)
    for name, case in PNDM_CASES.items():
        plain_loop_fixture(f"pndm.{name}", PNDMScheduler.from_config(case["config"]), case, tensors)
    for name, case in DPM_CASES.items():
        plain_loop_fixture(f"dpm.{name}", DPMSolverMultistepScheduler.from_config(case["config"]), case, tensors,
                           sigmas=True)
    for name, case in LCM_SOLVER_CASES.items():
        lcm_solver_fixture(name, case, tensors)
    helpers = helpers_fixture(tensors)
    # clone(): several outputs alias an input (x0 = model_output for "sample", the last step's
    # prev_sample = denoised), which safetensors refuses to save twice.
    save_file({k: v.contiguous().clone() for k, v in sorted(tensors.items())}, str(out / "sampling.safetensors"),
              metadata={"format": "pt"})
    cases = {"ddim": DDIM_CASES, "euler": EULER_CASES, "lcm": LCM_CASES, "pndm": PNDM_CASES, "dpm": DPM_CASES,
             "lcm_solver": LCM_SOLVER_CASES,
             "helpers": helpers, "sample_shape": list(SAMPLE_SHAPE)}
    (out / "sampling.json").write_text(json.dumps(cases, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}/sampling.json and sampling.safetensors ({len(tensors)} tensors)")
    # A DPM-Solver config file as diffusers saves it, to read back with the class's defaults.
    dpm = DPMSolverMultistepScheduler(**SD15_BETAS, use_karras_sigmas=True)
    (out / "dpm_scheduler_config.json").write_text(dpm.to_json_string())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "schedulers")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, cfg in CASES.items():
        s = DDPMScheduler(**cfg)
        n = s.config.num_train_timesteps
        tensors[f"{name}.betas"] = s.betas.clone()
        tensors[f"{name}.alphas_cumprod"] = s.alphas_cumprod.clone()
        g = torch.Generator().manual_seed(len(name))
        x0 = torch.randn(5, 4, 3, 3, generator=g)
        noise = torch.randn(5, 4, 3, 3, generator=g)
        t = torch.cat([torch.tensor([0, n - 1]), torch.randint(0, n, (3,), generator=g)])
        tensors[f"{name}.x0"], tensors[f"{name}.noise"], tensors[f"{name}.t"] = x0, noise, t
        tensors[f"{name}.noisy"] = s.add_noise(x0, noise, t)
        tensors[f"{name}.velocity"] = s.get_velocity(x0, noise, t)
        tensors[f"{name}.fp16.noisy"] = s.add_noise(x0.half(), noise.half(), t)
        tensors[f"{name}.fp16.velocity"] = s.get_velocity(x0.half(), noise.half(), t)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(a.out / "ddpm.safetensors"),
              metadata={"format": "pt"})
    (a.out / "ddpm.json").write_text(json.dumps({"cases": CASES}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.out}/ddpm.json and ddpm.safetensors ({len(tensors)} tensors)")
    write_sampling(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
