"""The daemon's side of the object store (a part of :class:`brain.shells.daemon.Daemon`):
what the store holds of the journal, and closing a night (docs/season.md)."""

from __future__ import annotations

import logging

log = logging.getLogger("brain.shells.daemon")


class NightStore:
    """Mixed into Daemon: uses its ``store``, ``journal``, ``core`` and ``_classifying``."""

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
