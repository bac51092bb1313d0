"""Reading a frame (FITS) and a reference catalogue (CSV), writing the detections (CSV);
every bad input is a one-line :class:`PhotometryError`."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from drivers.photometry.config import PhotometryError

OUTPUT_COLUMNS = ("ra_deg", "dec_deg", "mag", "mag_err", "snr", "flags")
REFERENCE_COLUMNS = ("ra_deg", "dec_deg", "mag")
# Keywords of the primary header that an image extension's header does not inherit.
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "PCOUNT",
               "GCOUNT", "XTENSION", "BSCALE", "BZERO", "EXTNAME", "", "COMMENT", "HISTORY"}


def _path(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise PhotometryError(f"{what} {str(path)!r} not found")
    if p.is_dir():
        raise PhotometryError(f"{what} {str(path)!r} is a directory")
    return p


def read_frame(path) -> tuple[np.ndarray, fits.Header]:
    """The first image HDU with data (float32) and its header, with the primary header's
    keywords added where the extension lacks them (GAIN, MAGZP, ... often live there)."""
    p = _path(path, "frame")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. VerifyWarning on non-standard keywords
            with fits.open(p, memmap=False) as hdul:
                primary = hdul[0].header
                for hdu in hdul:
                    if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU
                                      | fits.CompImageHDU) or hdu.data is None:
                        continue
                    data = np.asarray(hdu.data)
                    header = hdu.header.copy()
                    break
                else:
                    raise PhotometryError(f"empty frame: {str(path)!r} holds no image data")
                if hdu is not hdul[0]:
                    for card in primary.cards:
                        if card.keyword not in _STRUCTURAL and card.keyword not in header:
                            header.append(card)
                data = np.squeeze(data) if data.ndim > 2 else data
                if data.ndim != 2:
                    raise PhotometryError(f"{str(path)!r} is not a 2-D image (shape "
                                          f"{tuple(data.shape)})")
                if data.size == 0:
                    raise PhotometryError(f"empty frame: {str(path)!r} has no pixels")
                if data.dtype.kind not in "iuf":
                    raise PhotometryError(f"{str(path)!r}: pixels are not numbers "
                                          f"({data.dtype})")
                return data.astype(np.float32), header
    except PhotometryError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise PhotometryError(f"{str(path)!r} is not a readable FITS file ({reason})") from None


def read_reference(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A reference catalogue: CSV with a header naming at least ra_deg, dec_deg, mag
    (other columns ignored); each row's three values finite numbers, RA in [0, 360),
    Dec in [-90, 90]."""
    p = _path(path, "reference")
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise PhotometryError(f"reference {str(path)!r} is not a UTF-8 text file") from None
    except (OSError, csv.Error) as exc:
        raise PhotometryError(f"reference {str(path)!r} cannot be read ({exc})") from None
    if not rows:
        raise PhotometryError(f"reference {str(path)!r} is empty")
    head = [c.strip().lower() for c in rows[0]]
    missing = [c for c in REFERENCE_COLUMNS if c not in head]
    if missing:
        raise PhotometryError(f"reference {str(path)!r} lacks column(s) {', '.join(missing)} "
                              f"(header: {','.join(rows[0])[:80]!r})")
    cols = [head.index(c) for c in REFERENCE_COLUMNS]
    out = np.empty((len(rows) - 1, 3))
    n = 0
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            vals = [float(row[c]) for c in cols]
        except (IndexError, ValueError):
            raise PhotometryError(f"reference {str(path)!r} line {line}: need numbers in "
                                  f"{', '.join(REFERENCE_COLUMNS)}") from None
        ra, dec, _mag = vals
        if not all(math.isfinite(v) for v in vals) or not (0 <= ra < 360 and -90 <= dec <= 90):
            raise PhotometryError(f"reference {str(path)!r} line {line}: RA, Dec or mag out of "
                                  "range or not finite")
        out[n] = vals
        n += 1
    if n == 0:
        raise PhotometryError(f"reference {str(path)!r} has no rows")
    return out[:n, 0].copy(), out[:n, 1].copy(), out[:n, 2].copy()


def csv_text(ra, dec, mag, mag_err, snr, flags) -> str:
    """The output table: header ``ra_deg,dec_deg,mag,mag_err,snr,flags``, one row a
    source (positions to 1e-7 deg, magnitudes to 1e-4)."""
    lines = [",".join(OUTPUT_COLUMNS)]
    for a, d, m, e, s, f in zip(ra, dec, mag, mag_err, snr, flags, strict=True):
        lines.append(f"{a:.7f},{d:.7f},{m:.4f},{e:.4f},{s:.1f},{int(f)}")
    return "\n".join(lines) + "\n"
