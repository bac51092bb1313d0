"""A small sequence model for the transient classifier: a GRU over the detections.

In the spirit of RAPID, ORACLE and ATAT, the network reads the detections themselves
rather than hand-written features. Each detection becomes one token of
``N_TOKEN_FEATURES`` numbers (``tokenise``):

* log(1 + hours since the object's first detection) / 5 and log(1 + hours since the
  previous token) / 5;
* the band, one-hot (g, r, i);
* magnitude minus the object's brightest magnitude (clipped to 0..6) and minus the first
  magnitude in the same band (clipped to -5..5): shapes and colours, never absolute
  brightness (which depends on the survey's depth, as for the trees);
* log10 of the magnitude error (clipped to -3..0) + 2.

A light curve longer than ``MAX_TOKENS`` (64) detections is thinned to 64 detections
evenly spaced by index, first and last kept, so the token sequence spans the whole light
curve. Three per-object numbers join the GRU's summary: log(1 + detections) / 5,
log(1 + span in hours) / 5 and the share of bands seen.

The network (``build_network``): a linear embedding (32), a one-layer GRU (64) over the
packed sequences, the last hidden state and the mean of the outputs, a 64-unit layer and
14 logits; about 27,000 weights (110 kB as float32). Logits are divided by a temperature
fitted on held-out light curves. An object with no detections gets the uniform
distribution. Training: ``policies.sequence_training``; comparison with the trees:
``experiments/sequence_compare.py`` and docs/classifier.md ("A sequence model").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from observatory.taxonomy import CLASSES
from policies.classifier import softmax

ARTIFACT_DIR = Path(__file__).parent / "artifacts" / "sequence"
MAX_TOKENS = 64
N_TOKEN_FEATURES = 8
N_GLOBAL = 3
EMBED, HIDDEN = 32, 64
BATCH = 2048  # light curves per forward pass at prediction time


def tokenise(obj, mjd, band, mag, err, n_objects: int | None = None,
             max_tokens: int = MAX_TOKENS):
    """Padded token sequences from a detection table sorted by (obj, mjd): returns
    (tokens (n, max_tokens, N_TOKEN_FEATURES) float32, lengths (n,) int64, globals
    (n, N_GLOBAL) float32). Each object's tokens depend on its own detections only."""
    obj = np.asarray(obj, dtype=np.int64)
    mjd, mag, err = (np.asarray(a, dtype=np.float64) for a in (mjd, mag, err))
    band = np.asarray(band, dtype=np.int64)
    n = int(n_objects if n_objects is not None else (obj.max() + 1 if obj.size else 0))
    counts = np.bincount(obj, minlength=n)[:n]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    lengths = np.minimum(counts, max_tokens)
    tokens = np.zeros((n, max_tokens, N_TOKEN_FEATURES), dtype=np.float32)
    glob = np.zeros((n, N_GLOBAL), dtype=np.float32)
    if obj.size == 0:
        return tokens, lengths, glob
    # Per-object references over every detection.
    t0 = mjd[starts[counts > 0]]
    first_t = np.zeros(n)
    first_t[counts > 0] = t0
    last_t = np.zeros(n)
    last_t[counts > 0] = mjd[starts[counts > 0] + counts[counts > 0] - 1]
    brightest = np.full(n, np.inf)
    np.minimum.at(brightest, obj, mag)
    key = obj * 3 + band
    uk, first_idx = np.unique(key, return_index=True)
    first_band_mag = np.full(n * 3, np.nan)
    first_band_mag[uk] = mag[first_idx]
    bands_seen = np.bincount(uk // 3, minlength=n)[:n]
    # Thinning: at most max_tokens detections per object, evenly spaced by index.
    owner = np.repeat(np.arange(n), lengths)
    k = np.arange(owner.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    c = counts[owner]
    step = np.where(c > max_tokens, (c - 1) / max(max_tokens - 1, 1), 1.0)
    idx = starts[owner] + np.floor(k * step + 0.5).astype(np.int64)
    t = mjd[idx]
    hours = (t - first_t[owner]) * 24.0
    prev = np.where(k > 0, np.concatenate([[0.0], np.diff(hours)]), 0.0)
    b = band[idx]
    feats = np.zeros((owner.size, N_TOKEN_FEATURES))
    feats[:, 0] = np.log1p(np.maximum(hours, 0)) / 5
    feats[:, 1] = np.log1p(np.maximum(prev, 0)) / 5
    feats[np.arange(owner.size), 2 + b] = 1.0
    feats[:, 5] = np.clip(mag[idx] - brightest[owner], 0, 6)
    feats[:, 6] = np.clip(mag[idx] - first_band_mag[owner * 3 + b], -5, 5)
    feats[:, 7] = np.clip(np.log10(np.maximum(err[idx], 1e-6)), -3, 0) + 2
    tokens[owner, k] = feats
    glob[:, 0] = np.log1p(counts) / 5
    glob[:, 1] = np.log1p(np.maximum(last_t - first_t, 0) * 24) / 5
    glob[:, 2] = bands_seen / 3
    return tokens, lengths, glob


def build_network(n_classes: int = len(CLASSES)):
    """The GRU classifier (a torch module): forward(tokens, lengths, globals) -> logits."""
    import torch  # lazy: heavy library

    class GRUClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(N_TOKEN_FEATURES, EMBED)
            self.gru = torch.nn.GRU(EMBED, HIDDEN, batch_first=True)
            self.head = torch.nn.Sequential(
                torch.nn.Linear(2 * HIDDEN + N_GLOBAL, 64), torch.nn.ReLU(),
                torch.nn.Dropout(0.1), torch.nn.Linear(64, n_classes))

        def forward(self, tokens, lengths, glob):
            x = torch.relu(self.embed(tokens))
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
            out, h = self.gru(packed)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(
                out, batch_first=True, total_length=tokens.shape[1])
            mask = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None]).float()
            mean = (out * mask[:, :, None]).sum(1) / mask.sum(1).clamp(min=1)[:, None]
            return self.head(torch.cat([h[-1], mean, glob], dim=1))

    return GRUClassifier()


def network_logits(net, tokens, lengths, glob, batch: int = BATCH) -> np.ndarray:
    """Logits (n, classes) for light curves with at least one detection, in batches."""
    import torch  # lazy: heavy library

    net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(lengths), batch):
            out.append(net(torch.from_numpy(tokens[s:s + batch]),
                           torch.from_numpy(lengths[s:s + batch]),
                           torch.from_numpy(glob[s:s + batch])).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), dtype=np.float32)


@dataclass
class SequenceClassifier:
    """The GRU with its temperature; ``predict`` has the signature of
    ``policies.classifier.TransientClassifier.predict`` (positions are ignored)."""

    net: object  # the torch module of build_network
    temperature: float = 1.0
    classes: tuple[str, ...] = CLASSES
    report: dict = field(default_factory=dict)

    def logits(self, obj, mjd, band, mag, err, n_objects: int | None = None):
        """(raw logits of the objects with detections, their mask) for a table."""
        tokens, lengths, glob = tokenise(obj, mjd, band, mag, err, n_objects)
        has = lengths > 0
        return network_logits(self.net, tokens[has], lengths[has], glob[has]), has

    def predict(self, obj, mjd, band, mag, err, n_objects: int | None = None,
                radec: np.ndarray | None = None, ref: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (n_objects, 14) from a detection table sorted by (obj, mjd)
        (context ignored); uniform for an object without detections."""
        raw, has = self.logits(obj, mjd, band, mag, err, n_objects)
        prob = np.full((has.size, len(self.classes)), 1.0 / len(self.classes))
        if has.any():
            prob[has] = softmax(raw.astype(np.float64) / self.temperature)
        return prob

    def save(self, directory: Path = ARTIFACT_DIR, report: dict | None = None) -> None:
        """Weights as float32 arrays (weights.npz) and meta.json (classes, temperature,
        tokenisation, the training report)."""
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        np.savez_compressed(directory / "weights.npz", **state)
        meta = {"classes": list(self.classes), "temperature": self.temperature,
                "max_tokens": MAX_TOKENS, "embed": EMBED, "hidden": HIDDEN,
                "report": report if report is not None else self.report}
        (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path = ARTIFACT_DIR) -> SequenceClassifier:
        import torch  # lazy: heavy library

        meta = json.loads((directory / "meta.json").read_text())
        if (tuple(meta["classes"]) != CLASSES or meta["max_tokens"] != MAX_TOKENS
                or (meta["embed"], meta["hidden"]) != (EMBED, HIDDEN)):
            raise ValueError(f"{directory}: artifact does not match this code's classes "
                             "or network")
        net = build_network()
        with np.load(directory / "weights.npz") as w:
            net.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files})
        net.eval()
        return cls(net, float(meta["temperature"]), report=meta.get("report", {}))


@dataclass
class EnsembleClassifier:
    """The trees and the GRU together: probabilities ``p_trees^(1-w) p_gru^w``
    renormalised and sharpened by a temperature (``mode="log"``), or the weighted mean
    ``(1-w) p_trees + w p_gru`` (``mode="mean"``). Same ``predict`` as the trees."""

    trees: object  # TransientClassifier
    sequence: SequenceClassifier
    weight: float = 0.5
    mode: str = "log"
    temperature: float = 1.0

    def combine(self, p_trees: np.ndarray, p_seq: np.ndarray) -> np.ndarray:
        w = self.weight
        if self.mode == "mean":
            return (1 - w) * p_trees + w * p_seq
        z = (1 - w) * np.log(p_trees + 1e-12) + w * np.log(p_seq + 1e-12)
        return softmax(z / self.temperature)

    def predict(self, obj, mjd, band, mag, err, n_objects: int | None = None,
                radec: np.ndarray | None = None, ref: np.ndarray | None = None) -> np.ndarray:
        n = int(n_objects if n_objects is not None
                else (np.max(obj) + 1 if np.size(obj) else 0))
        return self.combine(self.trees.predict(obj, mjd, band, mag, err, n, radec, ref),
                            self.sequence.predict(obj, mjd, band, mag, err, n))
