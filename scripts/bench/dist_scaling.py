#!/usr/bin/env python3
"""Data-parallel scaling on this machine, side by side in one run: at equal global batch,
`msclip-train --nproc-per-node 2` with 1 libtorch thread per rank against one process with 2
threads, alternating, for the tiny and the B/32 presets. Reports the median samples/s of each,
the scaling efficiency (2 ranks × 1 thread ÷ 1 rank × 2 threads: equal cores, so 1.0 means
data parallelism costs nothing and > 1 that it beats intra-op threading), and rank 0's time in
collectives per step (feature all-gather + bucketed gradient all-reduce + buffer averaging,
from metrics.jsonl's comm_frac).

  scripts/bench/dist_scaling.py [--steps 8] [--rounds 2] [--models tiny-clip,msclip-s-b32]
(needs a release build: `make build`). Python here only drives the binary and reads JSON."""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=8, help="steps per run; the first 2 are warm-up")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--models", default="tiny-clip,msclip-s-b32")
ap.add_argument("--batch-tiny", type=int, default=64, help="global batch")
ap.add_argument("--batch-b32", type=int, default=16, help="global batch")
args = ap.parse_args()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "msclip-train")

def config(d, model, batch):
    path = os.path.join(d, f"{model}-{batch}.toml")
    with open(path, "w") as f:
        f.write(f'model = "{model}"\ndata_items = 100000\nsteps = {args.steps}\nbatch_size = {batch}\n'
                'lr = 1e-4\nmin_lr = 1e-5\nwarmup_steps = 1\ngrad_clip = 1.0\nseed = 0\nsave_every = 0\n'
                'keep = 1\neval_every = 0\neval_items = 100\nworkers = 1\nprefetch = 2\n')
    return path

def run(d, model, batch, ranks, threads, tag):
    out = os.path.join(d, tag)
    cmd = [BIN, "--config", config(d, model, batch // ranks), "--out", out, "--force"]
    if ranks > 1:
        cmd += ["--nproc-per-node", str(ranks)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))][2:]
    sps = statistics.median(r["samples_per_s"] for r in rows)
    comm = statistics.median(r.get("comm_frac", 0.0) * r.get("global_batch", batch) / r["samples_per_s"] for r in rows)
    return sps, comm

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; libtorch 2.11.0 (CPU); {args.steps} steps per run (2 warm-up), "
      f"{args.rounds} rounds alternating")
print(f"{'model':<14} {'global batch':>12} {'1 rank × 2 thr':>15} {'2 ranks × 1 thr':>16} {'efficiency':>10} {'comm s/step':>12} {'comm share':>10}")
with tempfile.TemporaryDirectory() as d:
    for model in args.models.split(","):
        batch = args.batch_tiny if model.startswith("tiny") else args.batch_b32
        one, two, comm = [], [], []
        for _ in range(args.rounds):
            one.append(run(d, model, batch, 1, 2, "one")[0])
            s, c = run(d, model, batch, 2, 1, "two")
            two.append(s)
            comm.append(c)
        a, b, c = statistics.median(one), statistics.median(two), statistics.median(comm)
        step = batch / b
        print(f"{model:<14} {batch:>12} {a:>13.1f}/s {b:>14.1f}/s {b / a:>10.2f} {c:>12.3f} {c / step:>9.0%}")
        sys.stdout.flush()
