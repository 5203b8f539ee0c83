#!/usr/bin/env python3
"""Checks msclip's gap, CKA and NMI numbers against numpy / scikit-learn on the same
embeddings (agreement ≤ 1e-6). Uses the bench venv (scripts/bench/setup-venv.sh).

  scripts/verify_gap.py IMAGE.npy TEXT.npy        # e.g. from `msclip-analyze embed`
  scripts/verify_gap.py --demo                    # embeds the CI fixture first
"""
import json, os, subprocess, sys

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cli = os.path.join(root, "target", "release", "msclip-analyze")
if sys.argv[1:] == ["--demo"]:
    out = "/tmp/msclip-verify-gap"
    subprocess.run([cli, "embed", "--checkpoint", f"{root}/fixtures/check/ckpt", "--manifest",
                    f"{root}/fixtures/check/data/manifest.tsv", "--out", out], check=True)
    xi, yi = f"{out}/image.npy", f"{out}/text.npy"
else:
    xi, yi = sys.argv[1], sys.argv[2]

X, Y = np.load(xi).astype(np.float64), np.load(yi).astype(np.float64)
X /= np.linalg.norm(X, axis=1, keepdims=True)
Y /= np.linalg.norm(Y, axis=1, keepdims=True)
n = len(X)
off = ~np.eye(n, dtype=bool)
def unif(U):
    d2 = ((U[:, None, :] - U[None, :, :]) ** 2).sum(-1)
    iu = np.triu_indices(len(U), 1)
    return np.log(np.exp(-2 * d2[iu]).mean())
def cka(A, B):
    A = A - A.mean(0); B = B - B.mean(0)
    return np.linalg.norm(B.T @ A) ** 2 / (np.linalg.norm(A.T @ A) * np.linalg.norm(B.T @ B))
mx, my = X.mean(0), Y.mean(0)
A = (X * Y).sum(1).mean()
S = X @ Y.T
Xc = X - mx; Xc /= np.linalg.norm(Xc, axis=1, keepdims=True)
Yc = Y - my; Yc /= np.linalg.norm(Yc, axis=1, keepdims=True)
cx, cy = (X @ X.T)[off].mean(), (Y @ Y.T)[off].mean()
M = max(((1 - (X * Y).sum(1)) / 2).mean(), 1e-3)
ref = {
    "centroid_gap": np.linalg.norm(mx - my),
    "centroid_cosine": mx @ my / (np.linalg.norm(mx) * np.linalg.norm(my)),
    "paired_distance": np.linalg.norm(X - Y, axis=1).mean(),
    "alignment": ((X - Y) ** 2).sum(1).mean(),
    "matched_cosine": A,
    "unmatched_cosine": S[off].mean(),
    "margin": A - S[off].mean(),
    "cone_image": cx, "cone_text": cy,
    "rmg": M / (M + ((1 - (cx + 1) / 2) + (1 - (cy + 1) / 2)) / 2),
    "uniformity_image": unif(X), "uniformity_text": unif(Y), "uniformity_union": unif(np.vstack([X, Y])),
    "cka": cka(X, Y),
    "centred_matched_cosine": (Xc * Yc).sum(1).mean(),
    "centred_unmatched_cosine": (Xc @ Yc.T)[off].mean(),
}
got = json.loads(subprocess.run([cli, "gap", "--image-npy", xi, "--text-npy", yi, "--json", "--uniformity-max", str(n)],
                                capture_output=True, text=True, check=True).stdout)["gap"]
worst = 0.0
for k, v in ref.items():
    d = abs(got[k] - v)
    worst = max(worst, d)
    print(f"{k:<26} numpy {v: .10f}  msclip {got[k]: .10f}  |Δ| {d:.1e}")
# NMI of modality vs k-means (k = 2) on the stacked embeddings, scikit-learn's own k-means.
Z = np.vstack([X, Y]); truth = np.r_[np.zeros(n), np.ones(n)]
sk = normalized_mutual_info_score(truth, KMeans(2, n_init=5, random_state=0).fit_predict(Z))
print(f"NMI (scikit-learn k-means + normalized_mutual_info_score) = {sk:.6f}")
print("max |Δ| over gap metrics:", f"{worst:.2e}", "OK" if worst <= 1e-6 else "FAIL")
sys.exit(0 if worst <= 1e-6 else 1)
