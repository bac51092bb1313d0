"""The transient classifier: light-curve features -> calibrated class probabilities.

A LightGBM multiclass model over ``policies.features`` with temperature scaling fitted
on held-out light curves (so probabilities are calibrated: see the expected calibration
error in the training report). The same object serves the fast shell in-process and the
daemon's actor: ``predict(table)`` takes a flat detection table and returns one row of
probabilities per object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from observatory.taxonomy import CLASSES
from policies.features import extract, feature_names

ARTIFACT_DIR = Path(__file__).parent / "artifacts" / "classifier"


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class TransientClassifier:
    booster: object  # lightgbm.Booster
    temperature: float
    classes: tuple[str, ...] = CLASSES

    @classmethod
    def load(cls, directory: Path = ARTIFACT_DIR) -> TransientClassifier:
        import lightgbm  # lazy: heavy optional library

        meta = json.loads((directory / "meta.json").read_text())
        if tuple(meta["classes"]) != CLASSES or meta["features"] != feature_names():
            raise ValueError(f"{directory}: artifact does not match this code's classes or "
                             "features; run `brain train classifier`")
        booster = lightgbm.Booster(model_file=str(directory / "model.txt"))
        return cls(booster, float(meta["temperature"]))

    def save(self, directory: Path, report: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "model.txt"))
        meta = {"classes": list(self.classes), "features": feature_names(),
                "temperature": self.temperature, "report": report or {}}
        (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros((0, len(self.classes)))
        raw = self.booster.predict(features, raw_score=True, num_threads=0)
        return softmax(np.asarray(raw) / self.temperature)

    def predict(self, obj, mjd, band, mag, err, n_objects: int | None = None) -> np.ndarray:
        """Probabilities (n_objects, 14) from a detection table sorted by (obj, mjd)."""
        return self.predict_features(extract(obj, mjd, band, mag, err, n_objects))
