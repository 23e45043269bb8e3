"""Reads a file written by lisadiff's safetensors writer with the Python package and checks
every tensor against scripts/make_fixtures.py's dtype_sample(), byte for byte."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_fixtures import dtype_sample  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

path = sys.argv[1]
expected = dtype_sample()
with safe_open(path, framework="pt") as f:
    assert f.metadata() == {"format": "pt", "writer": "lisadiff"}, f.metadata()
    keys = set(f.keys())
    assert keys == set(expected), sorted(keys ^ set(expected))
    for name, want in expected.items():
        got = f.get_tensor(name)
        assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape)
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), name
print(f"python read {len(keys)} tensors")
