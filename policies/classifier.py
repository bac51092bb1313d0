"""The transient classifier: light-curve features -> calibrated class probabilities.

A LightGBM multiclass model over the light-curve features of ``policies.features`` (ours)
and ``policies.lc_features`` (the field's ``light-curve`` library), and the sky context of
``policies.context`` where a position is known, with temperature scaling fitted
on held-out light curves (so probabilities are calibrated: see the expected calibration
error in the training report). The same object serves the fast shell in-process and the
daemon's actor: ``predict(table)`` takes a flat detection table and returns one row of
probabilities per object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from observatory.taxonomy import CLASSES
from policies.context import CONTEXT_NAMES, context_features
from policies.features import extract, feature_names
from policies.forest import CompiledForest
from policies.lc_features import extract_lc, lc_feature_names

ARTIFACT_DIR = Path(__file__).parent / "artifacts" / "classifier"


def model_feature_names() -> list[str]:
    """The model's inputs, in order: ours, the library's, the context."""
    return feature_names() + lc_feature_names() + CONTEXT_NAMES


def model_features(obj, mjd, band, mag, err, n_objects: int | None = None,
                   radec: np.ndarray | None = None, ref: np.ndarray | None = None) -> np.ndarray:
    """(n_objects, len(model_feature_names())) from a detection table sorted by (obj,
    mjd), optional per-object positions ``radec`` (n_objects, 2) in degrees and the
    reference's magnitudes ``ref`` (n_objects, 3; ``policies.context``)."""
    obj = np.asarray(obj, dtype=np.int64)
    n = int(n_objects if n_objects is not None else (obj.max() + 1 if obj.size else 0))
    return np.hstack([extract(obj, mjd, band, mag, err, n), extract_lc(obj, mjd, band, mag, err, n),
                      context_features(radec, n, ref, obj, band, mag)])


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class TransientClassifier:
    booster: object  # lightgbm.Booster
    temperature: float
    classes: tuple[str, ...] = CLASSES
    # The booster's trees compiled for batches (policies.forest), built on first use;
    # False where they cannot be (LightGBM's own predict is used then).
    _forest: object = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, directory: Path = ARTIFACT_DIR) -> TransientClassifier:
        import lightgbm  # lazy: heavy optional library

        meta = json.loads((directory / "meta.json").read_text())
        if tuple(meta["classes"]) != CLASSES or meta["features"] != model_feature_names():
            raise ValueError(f"{directory}: artifact does not match this code's classes or "
                             "features; run `brain train classifier`")
        booster = lightgbm.Booster(model_file=str(directory / "model.txt"))
        return cls(booster, float(meta["temperature"]))

    def save(self, directory: Path, report: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "model.txt"))
        meta = {"classes": list(self.classes), "features": model_feature_names(),
                "temperature": self.temperature, "report": report or {}}
        (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros((0, len(self.classes)))
        if self._forest is None:
            try:
                self._forest = CompiledForest(self.booster)
            except ValueError:
                self._forest = False
        if self._forest:
            raw = self._forest.raw(features)
        else:
            raw = self.booster.predict(features, raw_score=True, num_threads=0)
        return softmax(np.asarray(raw) / self.temperature)

    def predict(self, obj, mjd, band, mag, err, n_objects: int | None = None,
                radec: np.ndarray | None = None, ref: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (n_objects, 14) from a detection table sorted by (obj, mjd), with
        optional per-object positions ``radec`` (n_objects, 2; NaN: unknown) and
        reference magnitudes ``ref`` (n_objects, 3; NaN: unknown, +inf: none)."""
        return self.predict_features(model_features(obj, mjd, band, mag, err, n_objects,
                                                    radec, ref))
