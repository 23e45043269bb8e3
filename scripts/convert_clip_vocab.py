#!/usr/bin/env python3
"""Builds SD1.5's CLIP tokenizer folder (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json) from OpenAI's BPE merges file as the open_clip_torch wheel ships it.

    convert_clip_vocab.py --wheel open_clip_torch-X.whl --out DIR [--check]

The wheel's open_clip/bpe_simple_vocab_16e6.txt.gz holds a header line and 262,144 merges;
CLIP uses the first 48,894 (../shared/spec/models.md section 6.1 and 6.4). The vocabulary is
  ids 0-255      the 256 byte symbols (GPT-2's bytes_to_unicode, printable bytes first)
  ids 256-511    the same symbols with "</w>"
  ids 512-49405  the merges in rank order, each the concatenation of its pair
  49406, 49407   "<|startoftext|>", "<|endoftext|>"
merges.txt is "#version: 0.2" and those 48,894 merges. tokenizer_config.json and
special_tokens_map.json are those of SD1.5's tokenizer folder (section 1.7). The output
directory must not exist; scripts/setup.sh writes into a temporary one and renames it.

--check loads the result with transformers' CLIPTokenizer and compares known ids (section 6.3).
Python is a setup tool here; nothing lisadiff runs needs it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import zipfile
from pathlib import Path

MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # the slice open_clip and transformers' slow CLIPTokenizer take
VOCAB_SIZE = 49408

ADDED_TOKEN = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", **ADDED_TOKEN},
    "do_lower_case": True,
    "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", **ADDED_TOKEN},
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "<|endoftext|>",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", **ADDED_TOKEN},
}
SPECIAL_TOKENS_MAP = {
    "bos_token": {"content": "<|startoftext|>", **ADDED_TOKEN},
    "eos_token": {"content": "<|endoftext|>", **ADDED_TOKEN},
    "pad_token": "<|endoftext|>",
    "unk_token": {"content": "<|endoftext|>", **ADDED_TOKEN},
}
# ../shared/spec/models.md section 6.3 (content ids, without bos/eos).
KNOWN_IDS = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "hello": [3306],
    "hello world!": [3306, 1002, 256],
    "Hi there": [1883, 997],
    "magnificently": [9725, 2922],
    "let's see here": [1094, 568, 862, 763],
    "": [],
}


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte symbols in id order: printable bytes as themselves, then the rest from U+0100."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def read_merges(wheel: Path) -> tuple[list[str], str]:
    with zipfile.ZipFile(wheel) as archive:
        try:
            packed = archive.read(MEMBER)
        except KeyError:
            sys.exit(f"{wheel}: no {MEMBER} in the wheel")
    lines = gzip.decompress(packed).decode("utf-8").split("\n")
    merges = lines[1:1 + NUM_MERGES]  # line 0 is the header
    if len(merges) != NUM_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        sys.exit(f"{wheel}: {MEMBER} does not hold {NUM_MERGES} two-symbol merges after its header")
    return merges, hashlib.sha256(packed).hexdigest()


def build_vocab(merges: list[str]) -> dict[str, int]:
    symbols = bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        sys.exit(f"built {len(vocab)} distinct tokens from {len(tokens)}, expected {VOCAB_SIZE}")
    return vocab


def write_folder(out: Path, vocab: dict[str, int], merges: list[str]) -> None:
    out.mkdir(parents=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2) + "\n", encoding="utf-8")


def check_with_transformers(out: Path) -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(out))
    if (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) != (49406, 49407, 49407, VOCAB_SIZE):
        sys.exit(f"{out}: transformers sees bos {tok.bos_token_id}, eos {tok.eos_token_id}, pad {tok.pad_token_id}, "
                 f"{len(tok)} tokens; expected 49406, 49407, 49407, {VOCAB_SIZE}")
    for prompt, ids in KNOWN_IDS.items():
        got = tok(prompt, add_special_tokens=False).input_ids
        if got != ids:
            sys.exit(f"{out}: {prompt!r} encodes to {got}, expected {ids}")
    padded = tok([""], padding="max_length", max_length=77, truncation=True).input_ids[0]
    if padded != [49406] + [49407] * 76:
        sys.exit(f"{out}: the empty prompt gives {padded[:4]}..., expected 49406 then 76 x 49407")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, required=True, help="open_clip_torch wheel")
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    parser.add_argument("--sha256", help="expected SHA-256 of the wheel's bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--check", action="store_true", help="check known ids with transformers")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out}: already exists")
    merges, digest = read_merges(args.wheel)
    if args.sha256 and digest != args.sha256:
        sys.exit(f"{args.wheel}: {MEMBER} has SHA-256 {digest}, expected {args.sha256}")
    write_folder(args.out, build_vocab(merges), merges)
    if args.check:
        check_with_transformers(args.out)
    print(f"{args.out}: {VOCAB_SIZE} tokens, {len(merges)} merges (from {args.wheel.name}, {MEMBER} sha256 {digest[:12]}...)")


if __name__ == "__main__":
    main()
