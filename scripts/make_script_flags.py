#!/usr/bin/env python3
"""Writes tests/fixtures/recipes/<script>.flags.json: every command-line flag of the diffusers
training scripts lisadiff's recipes follow, as the script's own argparse parser defines it
(name, kind, default, choices, required), so that tests/recipes/test_script_flags.cpp can check
that each recipe executable keeps every flag's name, type and default.

    make_script_flags.py --diffusers DIR [--out tests/fixtures/recipes]

DIR is a diffusers checkout (e.g. `git worktree` of huggingface/diffusers, or the mirror's
files). The parser is taken from the script's `parse_args` function, run on its own (only
argparse and os are needed, and torchvision's transforms for train_text_to_image.py's choices,
not the script's other imports): ArgumentParser.parse_args is replaced
by one that hands the parser back before anything is parsed or validated.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
from pathlib import Path

SCRIPTS = {
    "train_instruct_pix2pix": "examples/instruct_pix2pix/train_instruct_pix2pix.py",
    "train_diffusion_dpo": "examples/research_projects/diffusion_dpo/train_diffusion_dpo.py",
    "train_lcm_distill_sd_wds": "examples/consistency_distillation/train_lcm_distill_sd_wds.py",
    "train_text_to_image": "examples/text_to_image/train_text_to_image.py",
}


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("captured")
        self.parser = parser


def script_parser(source: str) -> argparse.ArgumentParser:
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "parse_args")
    module = ast.Module(body=[fn], type_ignores=[])
    namespace = {"argparse": argparse, "os": os}
    if "transforms." in source:
        # train_text_to_image.py lists torchvision's InterpolationMode names as choices.
        from torchvision import transforms

        namespace["transforms"] = transforms
    exec(compile(module, "<parse_args>", "exec"), namespace)
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        namespace["parse_args"]() if fn.args.args == [] else namespace["parse_args"](None)
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError("parse_args returned without parsing")


def describe(parser: argparse.ArgumentParser) -> list[dict]:
    flags = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        name = next(s for s in a.option_strings if s.startswith("--"))[2:]
        if isinstance(a, argparse._StoreTrueAction):
            kind = "switch"
        elif a.type is int:
            kind = "int"
        elif a.type is float:
            kind = "float"
        elif a.type in (None, str):
            kind = "list" if a.nargs in ("+", "*") else "string"
        else:
            kind = getattr(a.type, "__name__", str(a.type))
        default = a.default
        if kind == "switch":
            default = bool(default)
        flags.append({"name": name, "dest": a.dest, "kind": kind, "default": default,
                      "choices": list(a.choices) if a.choices else None, "required": bool(a.required)})
    return flags


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffusers", required=True, help="a diffusers checkout, or a bare git repository (read at HEAD)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/recipes"))
    args = p.parse_args()
    root = Path(args.diffusers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bare = not (root / "examples").exists()
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for name, path in SCRIPTS.items():
        if bare:
            source = subprocess.run(["git", "-C", str(root), "show", f"HEAD:{path}"], capture_output=True, text=True,
                                    check=True).stdout
        else:
            source = (root / path).read_text()
        flags = describe(script_parser(source))
        doc = {"script": path, "diffusers_commit": commit, "flags": flags}
        (out / f"{name}.flags.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{name}: {len(flags)} flags")


if __name__ == "__main__":
    main()
