#!/usr/bin/env python3
"""Reference ids for lisadiff's CLIP tokenizer, made with transformers 5's CLIPTokenizer.

    make_tokenizer_fixtures.py --clip-vocab DIR [--out tests/fixtures/tokenizer]

DIR is the full SD1.5 vocabulary folder that scripts/setup.sh builds
(~/.cache/lisadiff/clip-vocab-<version>; build/test_paths.json names it as "clip_vocab_dir").
Writes into --out:

  expected_ids.json   for a corpus of tricky prompts: the content ids
                      (`tokenizer(p, add_special_tokens=False).input_ids`) and the padded ids
                      (`tokenizer(prompts, padding="max_length", max_length=77, truncation=True)`)
                      for two vocabularies: the tiny one of tests/fixtures/pipelines/micro-sd and
                      the full SD1.5 one. Plus "layouts": the tiny vocabulary with the
                      tokenizer_config.json / special_tokens_map.json of SD1.5, SD2 and SDXL-style
                      folders, each with the added tokens transformers builds from them and the ids
                      of prompts that contain special-token strings.
  unicode_reference.json
                      per code point, what the reference's Unicode steps do: the normaliser
                      (NFC, whitespace, lowercase) applied to each single character where it
                      changes it, and the character classes of the pre-tokeniser regex
                      (\\p{L}, \\p{N}, \\s) as code point ranges.

Regenerating with the pinned versions (requirements.txt) gives byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from convert_clip_vocab import SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG  # noqa: E402

MAX_LENGTH = 77
MICRO = "tests/fixtures/pipelines/micro-sd/tokenizer"

LONG = ("a breathtaking highly detailed matte painting of an ancient castle on a cliff above a stormy sea at "
        "sunset, volumetric lighting, dramatic clouds, crashing waves, tiny figures on the bridge, intricate "
        "stonework, moss and ivy, flocks of birds, golden hour, cinematic composition, ultra wide angle, 8k "
        "resolution, trending on artstation, concept art by several famous painters of the romantic era")

CORPUS = [
    # spec section 6.3 known ids, and plain prompts
    "a photo of a cat",
    "hello",
    "hello world!",
    "Hi there",
    "magnificently",
    "let's see here",
    "A Photo Of A CAT, Oil Painting",
    "Stable Diffusion v1.5, 8k, trending on ArtStation",
    # empty and whitespace-only
    "",
    " ",
    "   leading and trailing whitespace   ",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds",
    "nbsp\u00a0thin\u2009ideographic\u3000line\u2028para\u2029nel\u0085ogham\u1680end",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj",
    # NFC
    "caf\u00e9 vs cafe\u0301",
    "\u212bngstr\u00f6m \u00c5 A\u030a \u212a kelvin \u2126 ohm",
    "cr\u00e8me br\u00fbl\u00e9e \u00e0 la mode",
    "e\u0301\u0323 and e\u0323\u0301 reorder",
    "\u0301\u0301leading combining marks",
    "\u1112\u1161\u11ab\u1100\u116e\u11a8 jamo vs \ud55c\uad6d",
    # case mapping
    "\u0130stanbul \u0131i \u0130I",
    "\u03a3\u0391\u03a3 \u1f48\u0394\u03a5\u03a3\u03a3\u0395\u038e\u03a3 \u03c3\u03c2",
    "Stra\u00dfe STRASSE \u1e9e",
    "\u01c5 \u01c4 \u01c6 titlecase",
    "\U0001d400\U0001d401\U0001d402 \U0001d54f math letters",
    # compatibility forms that NFC keeps
    "\ufb01ne \ufb02ower",
    "\uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 \uff21\uff22\uff23 \uff11\uff12\uff13",
    # scripts
    "\u4e1c\u4eac\u7684\u732b \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\U00020000\U0002a6d6 cjk extension b",
    "\ud55c\uad6d\uc5b4 \uace0\uc591\uc774",
    "\u0642\u0637\u0629 \u062c\u0645\u064a\u0644\u0629 \u0641\u064a \u0627\u0644\u062d\u062f\u064a\u0642\u0629",
    "\u0645\u064e\u0631\u0652\u062d\u064e\u0628\u064b\u0627",
    "\u05d7\u05ea\u05d5\u05dc \u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",
    "\u041a\u043e\u0448\u043a\u0430 \u043d\u0430 \u041a\u0420\u042b\u0428\u0415",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e41\u0e21\u0e27\u0e19\u0e48\u0e32\u0e23\u0e31\u0e01",
    # emoji
    "a cat \U0001f431\U0001f600 and a dog\U0001f436",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 rainbow \U0001f3f3\ufe0f\u200d\U0001f308",
    "thumbs \U0001f44d\U0001f3fd wave \U0001f44b\U0001f3ff",
    "flags \U0001f1ef\U0001f1f5\U0001f1fa\U0001f1f8",
    "keycaps 1\ufe0f\u20e3 #\ufe0f\u20e3",
    # numbers
    "12345",
    "3.14",
    "1,000,000 and 4k 1080p 2x",
    "\u00bd \u00b2 \u00b3 \u216b \u0663 \u09e9",
    # punctuation and symbols
    "!!!???...,,,;;",
    "--==>> << ~~~",
    "(((masterpiece))), [best quality:1.2], {detailed}",
    "photo_of_a_cat-2024.jpg user@example.com https://x.y/z?q=1&r=2",
    "&amp; &lt;tag&gt; &#39;",
    # apostrophes and contractions
    "don't",
    "DON'T",
    "it\u2019s \u2018curly\u2019",
    "we're they've I'm you'll he'd",
    "'s 't 're 've 'm 'll 'd",
    "rock'n'roll ''quoted'' !'s",
    # special-token strings inside prompts
    "<|startoftext|>a photo",
    "a photo<|endoftext|>",
    "<|ENDOFTEXT|> and <|STARTOFTEXT|>",
    "a<|endoftext|>b<|startoftext|>c",
    "<<|endoftext|>> <|endoftext <|EndOfText|>",
    "\u0130<|endoftext|>",
    # control characters
    "bell\x07esc\x1b del\x7f c1\x80\x9f",
    "null\x00byte",
    # long prompts: truncation at 77, and a long word
    LONG,
    "a" * 120,
]

# Folder layouts tried on the tiny vocabulary ("!" = 0, "<|startoftext|>" = 813,
# "<|endoftext|>" = 814); each entry lists the json files written beside vocab.json/merges.txt.
MICRO_IDS = {"!": 0, "<|startoftext|>": 813, "<|endoftext|>": 814}


def sd2_files() -> dict:
    """stabilityai/stable-diffusion-2-1's tokenizer: SD1.5's files with pad_token "!"."""
    config = dict(TOKENIZER_CONFIG, pad_token="!")
    special = dict(SPECIAL_TOKENS_MAP, pad_token="!")
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def sdxl_files() -> dict:
    """A tokenizer_config.json as transformers 4.3x saves SDXL's tokenizer_2 (with
    added_tokens_decoder). Its special_tokens_map.json is deliberately at odds with it (bos not
    normalized): transformers reads special_tokens_map.json only when there is no
    added_tokens_decoder, and this layout pins that."""
    def added(content: str, normalized: bool) -> dict:
        return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
                "single_word": False, "special": True}
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(MICRO_IDS["!"]): added("!", False),
            str(MICRO_IDS["<|startoftext|>"]): added("<|startoftext|>", True),
            str(MICRO_IDS["<|endoftext|>"]): added("<|endoftext|>", False),
        },
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": "!",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    special = {"bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False},
               "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


LAYOUTS = {
    "bare": {},
    "sd15-style": {"tokenizer_config.json": TOKENIZER_CONFIG, "special_tokens_map.json": SPECIAL_TOKENS_MAP},
    "sd2-style": sd2_files(),
    "sdxl-style": sdxl_files(),
    "map-overrides-config": {
        "tokenizer_config.json": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
                                  "model_max_length": 77},
        "special_tokens_map.json": {"bos_token": {"content": "<|startoftext|>", "normalized": True},
                                    "pad_token": "<|endoftext|>"},
    },
}
LAYOUT_PROMPTS = [
    "<|startoftext|>a photo",
    "<|STARTOFTEXT|> a",
    "a photo <|endoftext|>",
    "a <|ENDOFTEXT|>",
    "hello!!",
    "what?! yes! !",
    "!",
    "<|EndOfText|><|startoftext|>",
    "wow!<|endoftext|>!",
]


def load(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def encode_all(tok, prompts: list[str]) -> dict:
    added = json.loads(tok.backend_tokenizer.to_str())["added_tokens"]
    return {
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "vocab_size": tok.vocab_size,
        "added_tokens": [{"content": t["content"], "id": t["id"], "normalized": t["normalized"]} for t in added],
        "content_ids": [tok(p, add_special_tokens=False).input_ids for p in prompts],
        "input_ids": tok(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids,
    }


def check_micro_tokenizer_json(folder: Path) -> None:
    """transformers builds this folder's tokenizer from tokenizer.json, lisadiff from
    vocab.json + merges.txt: they must hold the same vocabulary and merges."""
    model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = [line for line in (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
              if line and not line.startswith("#version")]
    json_merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    if model["vocab"] != vocab or json_merges != merges:
        sys.exit(f"{folder}: tokenizer.json and vocab.json/merges.txt disagree")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unicode_reference(tok) -> dict:
    from tokenizers import Regex, pre_tokenizers

    code_points = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    normalizer = tok.backend_tokenizer.normalizer
    changed = []
    for c in code_points:
        out = normalizer.normalize_str(chr(c))
        if out != chr(c):
            changed.append([c, [ord(x) for x in out]])
    text = "".join(chr(c) for c in code_points)
    classes = {}
    for name, pattern in (("letter", r"\p{L}"), ("number", r"\p{N}"), ("space", r"\s")):
        split = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
        members = sorted(ord(piece) for piece, _ in split.pre_tokenize_str(text))
        ranges = []
        for c in members:
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        classes[name] = ranges
    return {"normalized": changed, "classes": classes}


def dump(value, indent: int = 0) -> str:
    """JSON with lists of numbers on one line, everything else indented: small and diffable."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f'{pad} {json.dumps(k, ensure_ascii=False)}: {dump(v, indent + 1)}' for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(isinstance(v, (int, float, bool)) or v is None for v in value):
            return json.dumps(value, separators=(",", ":"))
        if all(isinstance(v, list) and all(isinstance(x, int) for x in v) for v in value):
            return "[\n" + ",\n".join(pad + " " + json.dumps(v, separators=(",", ":")) for v in value) + "\n" + pad + "]"
        return "[\n" + ",\n".join(pad + " " + dump(v, indent + 1) for v in value) + "\n" + pad + "]"
    if isinstance(value, str):
        return "".join(readable(c) for c in json.dumps(value, ensure_ascii=False))
    return json.dumps(value, ensure_ascii=False)


def readable(c: str) -> str:
    """Invisible or combining characters as \\u escapes, so that a reader sees "cafe\\u0301"."""
    if c == " " or unicodedata.category(c)[0] not in "ZCM":
        return c
    if ord(c) < 0x10000:
        return f"\\u{ord(c):04x}"
    high, low = divmod(ord(c) - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-vocab", type=Path, required=True, help="full SD1.5 vocabulary folder (setup.sh makes it)")
    parser.add_argument("--out", type=Path, default=REPO / "tests/fixtures/tokenizer")
    args = parser.parse_args()

    import tokenizers
    import transformers

    try:
        import ftfy  # noqa: F401  (transformers 5's CLIPTokenizer does not use it; recorded as the spec asks)
        ftfy_version = ftfy.__version__
    except ImportError:
        ftfy_version = None

    micro = REPO / MICRO
    check_micro_tokenizer_json(micro)
    micro_tok = load(micro)
    vocabularies = {
        "micro-sd": {"folder": MICRO, **encode_all(micro_tok, CORPUS)},
        "sd15": {"folder": "clip_vocab_dir (scripts/setup.sh)",
                 "vocab_json_sha256": sha256(args.clip_vocab / "vocab.json"),
                 "merges_txt_sha256": sha256(args.clip_vocab / "merges.txt"),
                 **encode_all(load(args.clip_vocab), CORPUS)},
    }
    if vocabularies["sd15"]["vocab_size"] != 49408:
        sys.exit(f"{args.clip_vocab}: not the full CLIP vocabulary")

    layouts = {}
    for name, files in LAYOUTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for vocab_file in ("vocab.json", "merges.txt"):
                shutil.copy(micro / vocab_file, folder / vocab_file)
            for file_name, content in files.items():
                (folder / file_name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
            layouts[name] = {"files": files, **encode_all(load(folder), LAYOUT_PROMPTS)}

    fixture = {
        "generated_by": "scripts/make_tokenizer_fixtures.py --clip-vocab <clip_vocab_dir>",
        "reference": "transformers CLIPTokenizer.from_pretrained(folder); content_ids = tokenizer(p, "
                     "add_special_tokens=False).input_ids; input_ids = tokenizer(prompts, padding='max_length', "
                     "max_length=77, truncation=True).input_ids",
        "versions": {"python": sys.version.split()[0], "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "ftfy": ftfy_version},
        "max_length": MAX_LENGTH,
        "prompts": CORPUS,
        "vocabularies": vocabularies,
        "layout_prompts": LAYOUT_PROMPTS,
        "layouts": layouts,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "expected_ids.json").write_text(dump(fixture) + "\n", encoding="utf-8")
    reference = {"generated_by": fixture["generated_by"], "versions": fixture["versions"],
                 **unicode_reference(micro_tok)}
    (args.out / "unicode_reference.json").write_text(dump(reference) + "\n", encoding="utf-8")
    for name in ("expected_ids.json", "unicode_reference.json"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
