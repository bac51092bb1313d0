"""A LightGBM model's trees as flat arrays, evaluated by a compiled kernel.

The brain classifies tens of thousands of candidates at a time, and LightGBM's own
``Booster.predict`` walks each light curve through every tree in turn, spending most
of its time waiting on memory. Here the trees are flattened once (``CompiledForest``)
and evaluated tree by tree over blocks of a few hundred light curves, so one tree's
nodes stay in cache while a block of rows passes through it; blocks run on all cores
(numba). The raw scores are LightGBM's, bit for bit: the same double-precision
comparisons, the same missing-value rules (a test checks against ``Booster.predict``).

LightGBM's rule for a numerical split on value ``v`` with threshold ``t``: a missing
value (NaN) goes the split's default way when the split learned one (missing type
"NaN"), and is read as 0.0 otherwise (missing type "None"); anything else goes left if
``v <= t``, infinities read as +-1e300. So each node stores three children: left, right
and where NaN goes. Categorical splits and the "Zero" missing type (which the brain's
models do not use) are refused at flattening, and the caller falls back to LightGBM.
"""

from __future__ import annotations

import threading

import numpy as np

AVOID_INF = 1e300  # LightGBM's bound on feature values
BLOCK = 512  # light curves a block: the block's rows (64 features each) stay in L2

# numba's workqueue threading layer must not be entered by two threads at once.
_KERNEL_LOCK = threading.Lock()
_kernel = None


def _compiled():
    """The kernel, compiled on first use (and cached on disk by numba)."""
    global _kernel
    if _kernel is None:
        import numba  # lazy: heavy optional library

        # numba's own thread pool: safe in a process forked after a prediction (its
        # OpenMP layer kills such a child), not safe for two threads at once
        # (_KERNEL_LOCK). Process-wide; numba reads it at its first parallel launch.
        numba.config.THREADING_LAYER = "workqueue"

        @numba.njit(parallel=True, cache=True, nogil=True)
        def kernel(x, feat, thr, child, leaves, roots, ncls, block):  # pragma: no cover
            n = x.shape[0]
            out = np.zeros((n, ncls))
            for b in numba.prange((n + block - 1) // block):
                lo = b * block
                hi = min(n, lo + block)
                for t in range(roots.shape[0]):
                    c = t % ncls
                    for i in range(lo, hi):
                        node = roots[t]
                        while node >= 0:
                            v = x[i, feat[node]]
                            if v <= thr[node]:
                                node = child[3 * node]
                            elif v > thr[node]:
                                node = child[3 * node + 1]
                            else:  # NaN
                                node = child[3 * node + 2]
                        out[i, c] += leaves[-node - 1]
            return out

        _kernel = kernel
    return _kernel


class CompiledForest:
    """A multiclass LightGBM booster as flat arrays; ``raw(x)`` gives the raw scores
    ``Booster.predict(x, raw_score=True)`` gives."""

    def __init__(self, booster) -> None:
        model = booster.dump_model()
        self.n_classes = int(model["num_class"])
        self.n_features = int(model["max_feature_idx"]) + 1
        feat, thr, child, leaves, roots = [], [], [], [], []

        def leaf(value: float) -> int:
            leaves.append(float(value))
            return -len(leaves)  # leaf k is stored as -(k + 1)

        for info in model["tree_info"]:
            root = info["tree_structure"]
            if "split_index" not in root:  # a tree of one leaf
                roots.append(leaf(root["leaf_value"]))
                continue
            order, pending = [], [root]  # the tree's splits, depth first
            while pending:
                node = pending.pop()
                order.append(node)
                pending += [node[k] for k in ("right_child", "left_child")
                            if "split_index" in node[k]]
            index = {id(node): len(feat) + i for i, node in enumerate(order)}
            roots.append(len(feat))
            for node in order:
                if node["decision_type"] != "<=" or node["missing_type"] == "Zero":
                    raise ValueError("only numerical splits with NaN or no missing "
                                     "handling can be compiled")
                feat.append(int(node["split_feature"]))
                thr.append(float(node["threshold"]))
                left, right = (index[id(sub)] if "split_index" in sub
                               else leaf(sub["leaf_value"])
                               for sub in (node["left_child"], node["right_child"]))
                # NaN: the learned default way, or read as 0.0 when none was learned.
                nan_left = (bool(node["default_left"]) if node["missing_type"] == "NaN"
                            else 0.0 <= thr[-1])
                child += (left, right, left if nan_left else right)
        self.feat = np.asarray(feat, dtype=np.int32)
        self.thr = np.asarray(thr, dtype=np.float64)
        self.child = np.asarray(child, dtype=np.int32)
        self.leaves = np.asarray(leaves, dtype=np.float64)
        self.roots = np.asarray(roots, dtype=np.int32)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (n, n_classes) of feature rows ``x`` (n, n_features)."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {x.shape}")
        # LightGBM reads values beyond +-1e300 (infinities) as +-1e300, in training
        # and in prediction: a split at 1e300 separates finite values from +inf.
        x = np.clip(x, -AVOID_INF, AVOID_INF)
        kernel = _compiled()
        with _KERNEL_LOCK:
            return kernel(x, self.feat, self.thr, self.child, self.leaves, self.roots,
                          self.n_classes, BLOCK)
