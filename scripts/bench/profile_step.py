#!/usr/bin/env python3
"""Where a training step's time goes, msclip next to OpenCLIP: one step of each (after warm-up)
under the operator profiler — libtorch's legacy profiler in `examples/bench_step`
(`MSCLIP_PROFILE`, `msclip::profile`) and `torch.profiler` for OpenCLIP — and a table of
self time per ATen operator (time inside an operator minus the operators it calls), largest
first. Profiling adds overhead to both sides; compare operators, not totals, with train_step.py.

  scripts/bench/profile_step.py [--model clip-b32] [--precision amp-bf16] [--anchor fused] [--top 25]
(needs `scripts/bench/setup-venv.sh` and a release build of examples/bench_step)"""
import argparse, collections, json, os, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="clip-b32", choices=["tiny-clip", "clip-b32"])
ap.add_argument("--precision", default="amp-bf16", choices=["fp32", "amp-bf16"])
ap.add_argument("--anchor", default="fused", choices=["foreach", "fused"])
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=None, help="default: 64 tiny, 8 B/32")
ap.add_argument("--top", type=int, default=25)
ap.add_argument("--keep", default=None, help="folder to keep both traces in")
args = ap.parse_args()

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oc_step import cases, make_step  # noqa: E402

torch.set_num_threads(args.threads)
name, cfg, bs = next(c for c in cases(args.batch or 64, args.batch or 8) if c[0] == args.model)
out = args.keep or tempfile.mkdtemp(prefix="msclip-profile-")
os.makedirs(out, exist_ok=True)


def self_times(path):
    """Self time (µs) and count per operator name from a Chrome trace (nesting per thread)."""
    d = json.load(open(path))
    ev = d["traceEvents"] if isinstance(d, dict) else d
    ev = [e for e in ev if e.get("ph") == "X" and "dur" in e and e.get("cat", "cpu_op") == "cpu_op"]
    by = collections.defaultdict(list)
    for e in ev:
        by[(e.get("pid"), e.get("tid"))].append(e)
    own, n, total = collections.Counter(), collections.Counter(), 0.0
    for es in by.values():
        es.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack = []
        for e in es:
            ts, du = float(e["ts"]), float(e["dur"])
            while stack and float(stack[-1]["ts"]) + float(stack[-1]["dur"]) <= ts + 1e-3:
                stack.pop()
            if stack:
                own[stack[-1]["name"]] -= du
            else:
                total += du
            own[e["name"]] += du
            n[e["name"]] += 1
            stack.append(e)
    return own, n, total


root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rust = os.environ.get("MSCLIP_BENCH_BIN") or os.path.join(root, "target", "release", "examples", "bench_step")
ms_trace = os.path.join(out, "msclip.json")
subprocess.run([rust, name, str(bs), "1", str(args.threads), "cpu", args.precision], check=True, capture_output=True,
               env=dict(os.environ, MSCLIP_PROFILE=ms_trace))
step = make_step(cfg, bs, args.anchor, "cpu", args.precision)
for _ in range(3):
    step()
oc_trace = os.path.join(out, "openclip.json")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
    step()
p.export_chrome_trace(oc_trace)

(ms, msn, mst), (oc, ocn, oct_) = self_times(ms_trace), self_times(oc_trace)
print(f"{name} batch {bs}, {args.precision}, {args.threads} threads; OpenCLIP with AdamW {args.anchor}; traces in {out}")
print(f"profiled step: msclip {mst / 1e3:.0f} ms, OpenCLIP {oct_ / 1e3:.0f} ms (profiler overhead included)")
print(f"{'operator':<58} {'msclip ms':>10} {'calls':>6} {'OpenCLIP ms':>12} {'calls':>6}")
names = sorted(set(ms) | set(oc), key=lambda k: -max(ms[k], oc[k]))[: args.top]
for k in names:
    print(f"{k[:58]:<58} {ms[k] / 1e3:>10.1f} {msn[k]:>6} {oc[k] / 1e3:>12.1f} {ocn[k]:>6}")
