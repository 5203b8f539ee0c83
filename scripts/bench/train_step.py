#!/usr/bin/env python3
"""Side-by-side benchmark of one optimizer step (forward + backward + AdamW, fixed synthetic
batch, same thread count) of msclip vs OpenCLIP (open_clip_torch on torch 2.11.0, the same
libtorch). Runs them alternately, reports median samples/s and the ratio msclip/OpenCLIP for
every OpenCLIP anchor: the default AdamW (foreach), `AdamW(fused=True)` and `torch.compile`
of the model (a failure to compile is printed as the row's reason); the last column is the
ratio to the best anchor.

  scripts/bench/train_step.py [--threads 2] [--steps 5]
  scripts/bench/train_step.py --device cuda --precision amp-bf16 --batch-tiny 512 --batch-b32 256
(needs `scripts/bench/setup-venv.sh` and a release build of examples/bench_step; for CUDA a
`--features cuda` build, its path in $MSCLIP_BENCH_BIN). On CUDA both sides synchronise after
every step; `amp-bf16` runs both under bf16 autocast with fp32 master weights."""
import argparse, json, os, platform, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
ap.add_argument("--precision", default="fp32", choices=["fp32", "amp-bf16"])
ap.add_argument("--batch-tiny", type=int, default=64)
ap.add_argument("--batch-b32", type=int, default=8)
ap.add_argument("--anchors", default="foreach,fused,compile", help="comma list of OpenCLIP anchors")
ap.add_argument("--models", default="tiny-clip,clip-b32")
args = ap.parse_args()

import torch, open_clip  # noqa: E402

torch.set_num_threads(args.threads)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oc_step import cases, make_step  # noqa: E402

CASES = cases(args.batch_tiny, args.batch_b32)


def sync():
    if args.device == "cuda":
        torch.cuda.synchronize()


def torch_step(cfg, bs, anchor="foreach"):
    step = make_step(cfg, bs, anchor, args.device, args.precision)
    times = []
    for i in range(args.steps + 3):
        sync()
        t = time.perf_counter()
        step()
        sync()
        if i >= 3:
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rust = os.environ.get("MSCLIP_BENCH_BIN") or os.path.join(root, "target", "release", "examples", "bench_step")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
gpu = f"; GPU {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""
print(f"machine: {cpu}, {os.cpu_count()} cores{gpu}; device={args.device} precision={args.precision} threads={args.threads}; torch {torch.__version__}, open_clip {open_clip.__version__}")
anchors = [a for a in args.anchors.split(",") if a]
print(f"{'model':<10} {'batch':>5} {'msclip':>9} " + " ".join(f"{'OC ' + a:>12} {'ratio':>6}" for a in anchors) + f" {'vs best':>8}   (samples/s)")
for name, cfg, bs in [c for c in CASES if c[0] in args.models.split(",")]:
    rs, ps = [], {a: [] for a in anchors}
    failed = {}
    for _ in range(args.rounds):
        out = subprocess.run([rust, name, str(bs), str(args.steps), str(args.threads), args.device, args.precision], capture_output=True, text=True, check=True)
        rs.append(json.loads(out.stdout.strip().splitlines()[-1])["step_s"])
        for a in anchors:
            if a in failed:
                continue
            try:
                ps[a].append(torch_step(cfg, bs, a))
            except Exception as e:  # torch.compile needs a working C++ toolchain for inductor
                failed[a] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    r = min(rs)
    cells, best = [], None
    for a in anchors:
        if a in failed or not ps[a]:
            cells.append(f"{'failed':>12} {'–':>6}")
            continue
        p = min(ps[a])
        best = p if best is None else min(best, p)
        cells.append(f"{bs / p:>12.1f} {p / r:>6.2f}")
    print(f"{name:<10} {bs:>5} {bs / r:>9.1f} " + " ".join(cells) + f" {(best / r if best else float('nan')):>8.2f}")
    for a, why in failed.items():
        print(f"  {name} OpenCLIP {a} failed: {why}")
