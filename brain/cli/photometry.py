"""brain photometry: one camera frame (FITS) to detections (CSV), docs/photometry.md."""

from __future__ import annotations

import sys

from brain.cli.common import UsageError, output_file

try:  # the `photometry` extra (sep); without it the command says so in one line
    from drivers.photometry import PhotometryError, process_frame, read_frame, read_reference
except ModuleNotFoundError as exc:  # pragma: no cover - every test venv installs it
    _MISSING: str | None = exc.name
else:
    _MISSING = None


def cmd_photometry(args) -> int:
    if _MISSING is not None:
        raise UsageError(f"needs the photometry extra ({_MISSING} is not installed): "
                         "pip install 'sitian-brain[photometry]'")
    out = output_file(args.out) if args.out is not None else None
    try:
        data, header = read_frame(args.frame)
        reference = read_reference(args.reference) if args.reference is not None else None
        result = process_frame(data, header, reference)
    except PhotometryError as exc:
        raise UsageError(str(exc)) from None
    zp = result.zero_point
    if reference is None:
        print(f"brain photometry: no --reference: zero point from the header's MAGZP "
              f"({zp.value:.4f}), positions from the header's WCS", file=sys.stderr)
    text = result.csv()
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        out.write_text(text)
    except OSError as exc:  # e.g. the disk filled up: no half-written CSV left
        out.unlink(missing_ok=True)
        raise UsageError(f"cannot write {str(out)!r}: {exc.strerror}") from None
    where = (f"{result.wcs_matches} reference stars, WCS rms {result.wcs_rms_arcsec:.2f}\""
             if result.wcs_refined else "header WCS")
    print(f"brain photometry: {len(result)} sources -> {out} (zero point {zp.value:.3f} "
          f"± {zp.err:.3f}, 5-sigma limit {result.limiting_mag:.2f}, {where})",
          file=sys.stderr)
    return 0
