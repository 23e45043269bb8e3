"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from the fixtures and
presets, plus small made inputs. The seeds are committed; rerun after a format changes:
    <venv>/bin/python fuzz/make_seeds.py [--training-state-seed FILE]
A Python tool (Pillow, tarfile); nothing at run time needs it.
"""
import argparse
import io
import json
import shutil
import struct
import tarfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"
SEP = b"\n--8<--\n"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def safetensors(tensors, metadata=None):
    header, buf = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(buf), len(buf) + len(data)]}
        buf += data
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + buf


def image(fmt, size=(6, 4), color=(200, 30, 40), **kw):
    img = Image.new("RGB", size, color)
    img.putpixel((1, 1), (0, 255, 0))
    b = io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


def tar(members):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    return b.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--training-state-seed", help="training_state.json matching fuzz_training_state's LISA run "
                    "(LISADIFF_FUZZ_WRITE_SEED=FILE build-fuzz/fuzz/fuzz_training_state writes it)")
    args = ap.parse_args()
    for d in OUT.glob("*"):
        if d.is_dir() and d.name != "training_state":
            shutil.rmtree(d)

    # safetensors
    put("safetensors", "all_dtypes.safetensors", (ROOT / "tests/fixtures/safetensors/all_dtypes.safetensors").read_bytes())
    put("safetensors", "two.safetensors", safetensors({
        "a.weight": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
        "b.bias": ("F16", [3], struct.pack("<3e", 1, -2, 0.5)),
    }, {"format": "pt"}))
    put("safetensors", "bf16_scalar_empty.safetensors", safetensors({
        "s": ("BF16", [], b"\x80\x3f"), "e": ("I64", [0, 3], b""), "u": ("U8", [5], bytes(range(5)))}))

    # configs: the first byte picks the parser (fuzz/fuzz_config.cpp)
    tiny = ROOT / "tests/fixtures/configs/tiny-sd"
    for sel, rel in [(0, "unet/config.json"), (1, "vae/config.json"), (2, "text_encoder/config.json"),
                     (3, "scheduler/scheduler_config.json")]:
        put("config", f"{sel}-tiny-{rel.split('/')[0]}.json", bytes([sel]) + (tiny / rel).read_bytes())
        put("config", f"{sel}-sd15-{rel.split('/')[0]}.json", bytes([sel]) + (ROOT / "tests/fixtures/configs/sd15" / rel).read_bytes())
    put("config", "4-model_index.json", b"\x04" + (ROOT / "tests/fixtures/pipelines/micro-sd/model_index.json").read_bytes())
    recipe = {"pretrained_model_name_or_path": "model", "train_data_dir": "data", "resolution": 64,
              "center_crop": True, "random_flip": True, "train_batch_size": 2, "max_train_steps": 10,
              "learning_rate": 1e-4, "lr_scheduler": "constant", "checkpointing_steps": 5,
              "mixed_precision": "no", "seed": 3, "lisa_interval": 5, "lisa_rate": -1,
              "report_to": "tensorboard", "validation_prompts": ["a red circle"], "lora_rank": 4}
    put("config", "5-recipe.json", b"\x05" + json.dumps(recipe, indent=1).encode())

    # tokenizer: even first byte = a prompt, odd = a tokenizer folder
    for i, p in enumerate(["a photo of a cat", "A RED Circle, on blue!!", "<|startoftext|>x<|endoftext|> 'll 'S 42",
                           "caf\u00e9 \u0130stanbul \u00df \U0001F600 \t\n  end"]):
        put("tokenizer", f"prompt-{i}.txt", b"\x00" + p.encode())
    tok = ROOT / "tests/fixtures/pipelines/micro-sd/tokenizer"
    folder = SEP.join([(tok / "vocab.json").read_bytes(), (tok / "merges.txt").read_bytes(),
                       (tok / "tokenizer_config.json").read_bytes(), b"{}", (tok / "tokenizer.json").read_bytes()])
    put("tokenizer", "folder-micro.txt", b"\x01" + folder)

    # webdataset shards: the last byte picks the kind (0 t2i, 1 ip2p, 2 dpo)
    png, jpg = image("PNG"), image("JPEG", quality=90)
    put("wds_tar", "t2i.tar", tar([("000.jpg", jpg), ("000.txt", b"a red square"),
                                   ("001.png", png), ("001.json", b'{"caption": "a green dot", "aesthetic": 6}'),
                                   ("001.txt", b"x")]) + b"\x00")
    put("wds_tar", "ip2p.tar", tar([("a.input_image.png", png), ("a.edited_image.jpg", jpg),
                                    ("a.edit_prompt.txt", b"make it blue")]) + b"\x01")
    put("wds_tar", "dpo.tar", tar([("k.jpg_0.jpg", jpg), ("k.jpg_1.png", png), ("k.caption.txt", b"a cat"),
                                   ("k.label_0.txt", b"1")]) + b"\x02")

    # images
    put("image", "rgb.png", png)
    put("image", "gray.png", Image_bytes_gray())
    put("image", "rgba.png", image_rgba())
    put("image", "rgb.jpg", jpg)
    put("image", "progressive.jpg", image("JPEG", progressive=True, quality=70))
    put("image", "rgb.webp", image("WEBP", quality=80))
    put("image", "lossless.webp", image("WEBP", lossless=True))
    put("image", "rgb.bmp", image("BMP"))
    put("image", "rgb.gif", image("GIF"))
    put("image", "source.png", (ROOT / "tests/fixtures/inference/source.png").read_bytes())
    img = Image.new("RGB", (3, 3), (1, 2, 3))
    from PIL import PngImagePlugin
    meta = PngImagePlugin.PngInfo()
    meta.add_text("prompt", "a red circle")
    meta.add_text("parameters", "steps 4, seed 1", zip=True)
    meta.add_itxt("note", "\u00e9t\u00e9", zip=False)
    b = io.BytesIO()
    img.save(b, format="PNG", pnginfo=meta)
    put("image", "text.png", b.getvalue())

    # metrics.jsonl
    lines = [{"step": s, "loss": 1.0 / s, "lr": 1e-4, "grad_norm": 0.5, "active_parameters": 100, "step_time": 0.3}
             for s in range(1, 6)]
    text = "\n".join(json.dumps(l) for l in lines) + "\n"
    text += json.dumps({"step": 5, "event": "checkpoint", "path": "checkpoint-5"}) + "\n"
    text += json.dumps({"step": 6, "loss": 0.1, "implicit_acc": 0.5, "ref_loss": 0.2}) + "\n"
    text += '{"step": 7, "loss": NaN, "lr": 1e300}\n'
    text += "not json\n" + json.dumps({"step": 7, "loss": "x"}) + "\n"
    put("metrics", "run.jsonl", text.encode())

    # training_state.json (fuzz/fuzz_training_state.cpp)
    if args.training_state_seed:
        state = json.loads(Path(args.training_state_seed).read_text())
        put("training_state", "lisa-matching.json", (json.dumps(state, indent=1) + "\n").encode())
        other = dict(state)
        other["lisa"] = dict(state["lisa"], units=99)
        put("training_state", "lisa-other-run.json", (json.dumps(other, indent=1) + "\n").encode())
        full = {k: v for k, v in state.items() if k != "lisa"}
        full.update(method="full", world_size=2, rank_parts=[{}, {"data_loader": {"records": 3}}])
        put("training_state", "full-2proc.json", (json.dumps(full, indent=1) + "\n").encode())


def Image_bytes_gray():
    b = io.BytesIO()
    Image.new("L", (5, 3), 128).save(b, format="PNG")
    return b.getvalue()


def image_rgba():
    b = io.BytesIO()
    Image.new("RGBA", (4, 4), (10, 20, 30, 128)).save(b, format="PNG")
    return b.getvalue()


if __name__ == "__main__":
    main()
