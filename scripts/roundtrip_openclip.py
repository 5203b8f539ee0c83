#!/usr/bin/env python3
"""Round trip: OpenCLIP state dict → `msclip-train import` → `msclip-train export` → OpenCLIP.
Checks that OpenCLIP, loading msclip's export, reproduces its own embeddings (fixture inputs).
  .cache/bench-venv/bin/python scripts/roundtrip_openclip.py"""
import json, os, subprocess, tempfile

import torch, open_clip
from safetensors.torch import load_file

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fx = os.path.join(root, "fixtures", "torch")
train = os.path.join(root, "target", "release", "msclip-train")
with tempfile.TemporaryDirectory() as d:
    subprocess.run([train, "import", "--from", f"{fx}/openclip-micro.pth", "--model-config", f"{fx}/openclip-micro.toml", "--out", f"{d}/ck"], check=True)
    subprocess.run([train, "export", "--checkpoint", f"{d}/ck", "--out", f"{d}/exp.safetensors"], check=True)
    model = open_clip.CLIP(embed_dim=16, quick_gelu=True,
                           vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
                           text_cfg=dict(context_length=8, vocab_size=1000, width=32, heads=2, layers=2)).eval()
    missing, unexpected = model.load_state_dict(load_file(f"{d}/exp.safetensors"), strict=True), None
ref = json.load(open(f"{fx}/openclip-micro.json"))
images = torch.tensor(ref["images"]).view(2, 3, 32, 32)
tokens = torch.tensor(ref["tokens"])
with torch.no_grad():
    di = (model.encode_image(images, normalize=True).flatten() - torch.tensor(ref["image_embeds"])).abs().max().item()
    dt = (model.encode_text(tokens, normalize=True).flatten() - torch.tensor(ref["text_embeds"])).abs().max().item()
print(f"round trip: max |Δ| image {di:.2e}, text {dt:.2e}", "OK" if max(di, dt) <= 1e-6 else "FAIL")
raise SystemExit(0 if max(di, dt) <= 1e-6 else 1)
