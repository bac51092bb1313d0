"""The brain core's transients: association, the known sky, classification and the
object store's nights (a part of :class:`brain.core.braincore.BrainCore`)."""

from __future__ import annotations

import math
import time

import numpy as np

from brain.core.association import DetectionBatch
from brain.core.followup import candidate_ids, take_snapshot
from observatory.times import unix_to_mjd
from policies.classifier import TransientClassifier


class Transients:
    """Mixed into BrainCore: uses its ``config``, ``associator``, ``_pending``,
    ``_classifier``, ``followup``, ``offload`` and ``on_flush``."""

    @property
    def classifier(self):
        if self._classifier is None:
            self._classifier = TransientClassifier.load()
        return self._classifier

    def _process_detections(self, t: float) -> None:
        if self._pending:
            self.associator.add(DetectionBatch.concat(self._pending))
            self._pending.clear()
        if t >= self._next_classify:
            self._next_classify = t + self.config.transients.classify_interval_s
            if self.on_flush is not None and self.associator.store is not None:
                self.associator.flush()
                self.on_flush(t)
            job = self.classification_job()
            if self.offload is not None:
                self.offload(t, job)  # the shell runs it aside, then finish_classification
            else:
                self.finish_classification(t, *job())

    def classification_job(self, everything: bool = False):
        """Take the candidates due for classification (those that gained detections since
        their last classification; all candidates with ``everything``) and copy their
        whole light curves (the store's history and the window); returns ``job`` where
        ``job()`` gives ``(rows, probabilities)``. The job touches no core state, so a
        shell may run it on another thread while the core goes on (the daemon does:
        half-hourly classification must not stall the telescopes)."""
        classifier = self.classifier
        n_cls = len(classifier.classes)
        cand = self.candidates(classified_only=False)
        assoc = self.associator
        n_det = assoc.n_detections()
        if not everything:
            # Again when it has gained half as many detections again, or any on a new
            # night (its whole history, from the store, goes to the classifier).
            was = assoc.classified_ndet[cand]
            grew = n_det[cand] > was
            cand = cand[grew & ((n_det[cand] >= 1.5 * was)
                                | (assoc.last_mjd[cand] > assoc.cat["classified_mjd"][cand]
                                   + 0.5))]
        assoc.classified_ndet[cand] = n_det[cand]
        assoc.cat["classified_mjd"][cand] = assoc.last_mjd[cand]
        assoc.mark_dirty(cand)
        if not cand.size:
            return lambda: (cand, np.zeros((0, n_cls)))
        obj, mjd, band, mag, err = assoc.history(cand)
        local = np.searchsorted(cand, obj)
        radec = np.stack([assoc.cat["ra_deg"][cand], assoc.cat["dec_deg"][cand]], axis=1)
        ref = assoc.cat["ref"][cand].astype(np.float64)

        def job():
            t0 = time.perf_counter()
            prob = classifier.predict(local, mjd, band, mag, err, cand.size, radec, ref)
            self.classify_ms.append((time.perf_counter() - t0) * 1e3)
            return cand, prob

        return job

    def finish_classification(self, t: float, cand: np.ndarray, prob: np.ndarray) -> None:
        """Store a classification job's answer and give follow-up a fresh snapshot."""
        self._store_prob(cand, prob)
        if self.followup is not None:
            self.followup.update(take_snapshot(
                t, self.associator, self.candidates(t),
                self.config.followup.recent_days, self.followup.max_mag))

    def _store_prob(self, cand: np.ndarray, prob: np.ndarray) -> None:
        if cand.size:
            # Rows move only when a night closes, never under a job in flight.
            self.associator.prob[cand] = prob
            self.associator.mark_dirty(cand)
            self.n_classified += int(cand.size)

    def candidates(self, t: float | None = None, classified_only: bool = True) -> np.ndarray:
        """Catalogue rows of the candidates at ``t`` (default: the latest event's time),
        by the one rule, :func:`candidate_ids`."""
        tr = self.config.transients
        return candidate_ids(self.associator, tr.min_detections, self._now_mjd(t),
                             tr.new_days, tr.change_mag, classified_only, tr.reference_mag)

    def _now_mjd(self, t: float | None) -> float:
        now = self.now if t is None else t
        if math.isfinite(now):
            return float(unix_to_mjd(now))
        a = self.associator  # no event yet (a core fed by hand): the latest detection
        return float(a.last_mjd.max()) if a.n_objects else 0.0

    def classify_candidates(self, everything: bool = False) -> np.ndarray:
        """Classify the candidates due now (see :meth:`classification_job`) in place;
        returns their ids."""
        cand, prob = self.classification_job(everything)()
        self._store_prob(cand, prob)
        return cand

    def flush_store(self) -> None:
        """Associate what is pending and write the store (a no-op without one)."""
        if self._pending:
            self.associator.add(DetectionBatch.concat(self._pending))
            self._pending.clear()
        self.associator.flush()

    def close_night(self, t: float) -> dict:
        """The night is over (the fast shell between nights, the daemon's dawn job):
        detections not yet associated are, and the night goes to the store
        (:meth:`Associator.close_night`)."""
        if self._pending:
            self.associator.add(DetectionBatch.concat(self._pending))
            self._pending.clear()
        return self.associator.close_night(float(unix_to_mjd(t)))
