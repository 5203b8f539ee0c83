"""One OpenCLIP training step (forward, symmetric InfoNCE, backward, AdamW) on a fixed synthetic
batch: the reference that scripts/bench/train_step.py times and scripts/bench/profile_step.py
profiles next to msclip's `examples/bench_step`."""
import torch, open_clip


def cases(batch_tiny, batch_b32):
    """(msclip preset, open_clip config, batch) for every benchmarked model."""
    return [
        ("tiny-clip", dict(embed_dim=64, quick_gelu=True,
                           vision_cfg=dict(image_size=64, layers=6, width=128, patch_size=8, head_width=32),
                           text_cfg=dict(context_length=24, vocab_size=49408, width=128, heads=4, layers=6)), batch_tiny),
        ("clip-b32", "ViT-B-32-quickgelu", batch_b32),
    ]


def make_step(cfg, bs, anchor="foreach", device="cpu", precision="fp32"):
    """A closure running one step; `anchor` is foreach (AdamW's default), fused
    (`AdamW(fused=True)`) or compile (`torch.compile` of the model)."""
    dev = torch.device(device)
    model = open_clip.create_model(cfg) if isinstance(cfg, str) else open_clip.CLIP(**cfg)
    model.to(dev).train()
    fwd = torch.compile(model) if anchor == "compile" else model
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(bs, 3, size, size, generator=g).to(dev)
    tokens = torch.randint(1, 49000, (bs, model.context_length), generator=g)
    tokens[:, -1] = 49407
    tokens = tokens.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6, fused=anchor == "fused")
    labels = torch.arange(bs, device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "amp-bf16"):
            fi, ft, scale = fwd(images, tokens)
            logits = scale * fi @ ft.t()
            loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
        loss.backward()
        opt.step()
    return step
