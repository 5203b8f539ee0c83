#!/usr/bin/env python3
"""Side-by-side linear-probe benchmark: msclip's L-BFGS multinomial logistic regression vs
scikit-learn's LogisticRegression(lbfgs) on the same saved features, same C sweep on the
validation split, refit on train+val, test accuracy. Times only the sweep + refit.

  msclip-analyze probe --checkpoint CK --fashion-mnist DIR --save-features F
  .cache/bench-venv/bin/python scripts/bench/probe.py F CK DIR [SK_MAX_ITER]
SK_MAX_ITER (default 1000) caps scikit-learn's iterations; at 1000 it stops unconverged for
C ≥ 1 on Fashion-MNIST features, so accuracy parity needs more. scikit-learn is also refit at
msclip's chosen C, which separates optimiser agreement from the C choice.
"""
import json, os, subprocess, sys, time

import numpy as np
from sklearn.linear_model import LogisticRegression

feat, ck, fm = sys.argv[1], sys.argv[2], sys.argv[3]
max_iter = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
lab = json.load(open(os.path.join(feat, "labels.json")))
X = {k: np.load(os.path.join(feat, f"{k}.npy")).astype(np.float64) for k in ("train", "val", "test")}
y = {k: np.array(lab[k]) for k in ("train", "val", "test")}
t = time.perf_counter()
best = None
for c in lab["c"]:
    m = LogisticRegression(C=c, max_iter=max_iter, tol=1e-6).fit(X["train"], y["train"])
    acc = (m.predict(X["val"]) == y["val"]).mean()
    if best is None or acc > best[1] + 1e-12:
        best = (c, acc)
m = LogisticRegression(C=best[0], max_iter=max_iter, tol=1e-6).fit(np.vstack([X["train"], X["val"]]), np.r_[y["train"], y["val"]])
sk_s = time.perf_counter() - t
sk_acc = (m.predict(X["test"]) == y["test"]).mean()
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
out = subprocess.run([os.path.join(root, "target/release/msclip-analyze"), "probe", "--checkpoint", ck, "--fashion-mnist", fm,
                      "--out", "/tmp/msclip-probe-bench"], capture_output=True, text=True, check=True)
r = json.load(open("/tmp/msclip-probe-bench/probe.json"))
print(f"scikit-learn (max_iter {max_iter}): best C {best[0]}, test top1 {sk_acc:.4f}, sweep+refit {sk_s:.2f}s, refit iterations {m.n_iter_[0]}")
if r['result']['best_c'] != best[0]:
    same = LogisticRegression(C=r['result']['best_c'], max_iter=max_iter, tol=1e-6).fit(np.vstack([X["train"], X["val"]]), np.r_[y["train"], y["val"]])
    print(f"scikit-learn at msclip's C {r['result']['best_c']}: test top1 {(same.predict(X['test']) == y['test']).mean():.4f}")
print(f"msclip:       best C {r['result']['best_c']}, test top1 {r['result']['test_top1']:.4f}, sweep+refit {r['fit_seconds']:.2f}s")
print(f"speed ratio (scikit-learn time / msclip time): {sk_s / r['fit_seconds']:.2f}")
