"""The daemon's side of the object store (a part of :class:`brain.shells.daemon.Daemon`):
what the store holds of the journal, closing a night (docs/season.md), and the detection
messages read as arrays."""

from __future__ import annotations

import logging

import numpy as np

from brain.core.association import DetectionBatch
from drivers.protocol import REF_MAG_RANGE, reference_magnitudes
from observatory.times import unix_to_mjd

log = logging.getLogger("brain.shells.daemon")


class NightStore:
    """Mixed into Daemon: uses its ``config``, ``store``, ``journal``, ``core`` and
    ``_classifying``."""

    def _on_flush(self, t: float) -> None:
        """The store has every detection the journal holds so far."""
        self.store.set_meta("journal_detections", str(self.journal.last_detection()))
        self.store.commit()

    def close_night(self, t: float) -> dict:
        """The night's end (the last dawn job): classifications in flight are applied
        (rows move when a night closes), the night goes to the store, and the journal
        drops the detection messages the store now holds."""
        for t_asked, fut in self._classifying:
            try:
                cand, prob = fut.result()
                self.core.finish_classification(t, cand, prob)
            except Exception as e:  # a broken model must not take the night down
                log.error("classification asked at %.0f failed: %s", t_asked, e)
        self._classifying.clear()
        done = self.core.close_night(t)
        self._on_flush(t)
        done["journal_pruned"] = self.journal.prune_detections(
            int(self.store.get_meta("journal_detections")))
        log.info("night closed in the store: %s", done)
        return done

    # Detection messages (``detections`` events) as arrays and batches -------------------
    def _arrays(self, data: dict) -> dict[str, np.ndarray]:
        src = data["sources"]
        bands = self.config.camera.bands
        band = bands.index(data["band"]) if data["band"] in bands else -1
        out = {k: np.array([s[k] for s in src], dtype=float)
               for k in ("ra_deg", "dec_deg", "mag", "mag_err")}
        out["mjd"] = np.full(len(src), float(unix_to_mjd(float(data["t_mid"]))))
        out["band"] = np.full(len(src), band, dtype=np.int64)
        if src and all("truth" in s for s in src):
            out["truth"] = np.array([int(s["truth"]) for s in src], dtype=np.int64)
        if any("ref_mag" in s for s in src):
            ref, bad = reference_magnitudes(src)
            out["ref_mag"] = np.array(ref, dtype=float)
            if bad:  # not magnitudes: unknown; the detections themselves are kept
                log.warning("%s: %d ref_mag values outside %g..%g taken as unknown",
                            data["obs_id"], bad, *REF_MAG_RANGE)
        return out

    @staticmethod
    def _batch(a: dict[str, np.ndarray]) -> DetectionBatch:
        keep = a["band"] >= 0
        truth, ref = a.get("truth"), a.get("ref_mag")
        return DetectionBatch(a["ra_deg"][keep], a["dec_deg"][keep], a["mjd"][keep],
                              a["band"][keep], a["mag"][keep], a["mag_err"][keep],
                              truth[keep] if truth is not None else None,
                              ref[keep] if ref is not None else None)
