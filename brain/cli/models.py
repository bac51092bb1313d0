"""brain classify and brain train: the classifier and the follow-up policy from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from brain.cli.common import (
    UsageError,
    existing_dir,
    output_dir,
    output_file,
)
from brain.config import load_config
from brain.evaluation.policy_training import train_policy
from brain.ops.hosting import RayUnreachable
from policies.classifier import ARTIFACT_DIR, TransientClassifier
from policies.classifier_training import train
from policies.lightcurve_io import (
    LightCurveInputError,
    classification_json,
    read_detections_csv,
    read_labelled,
)
from policies.rl import ARTIFACT_DIR as POLICY_ARTIFACT_DIR

# An earlier model artifact holds its meta.json; --out may be one (docs/cli-edges.md).
ARTIFACT_MARKS = ("meta.json",)


def cmd_classify(args) -> int:
    out = output_file(args.out) if args.out is not None else None
    try:
        table = read_detections_csv(args.file)
    except LightCurveInputError as exc:
        raise UsageError(str(exc)) from None

    try:
        model = TransientClassifier.load()
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the classifier from {ARTIFACT_DIR} ({exc}); "
                         "run `brain train classifier`") from None
    prob = model.predict(table.obj, table.mjd, table.band, table.mag, table.err,
                         len(table.object_ids), table.radec, table.ref)
    text = json.dumps(classification_json(table.object_ids, prob, model.classes), indent=1)
    if out is not None:
        try:
            out.write_text(text + "\n")
        except OSError as exc:  # e.g. the disk filled up: no half-written JSON left
            out.unlink(missing_ok=True)
            raise UsageError(f"cannot write {str(out)!r}: {exc.strerror}") from None
        print(f"classified {len(table.object_ids)} objects -> {out}", file=sys.stderr)
    else:
        print(text)
    return 0


def cmd_train(args) -> int:
    only = {"policy": ("--from-runs", "--n-per-class"),
            "classifier": ("--iterations", "--ray-address", "--nights")}
    given = {"--from-runs": bool(args.from_runs), "--n-per-class": args.n_per_class != 8000,
             "--iterations": args.iterations != 40, "--ray-address": bool(args.ray_address),
             "--nights": args.nights != 7}
    for flag in only[args.what]:
        if given[flag]:
            raise UsageError(f"{flag} does not apply to `train {args.what}`")
    if args.what == "policy":
        return _train_policy(args)

    labelled = _read_labelled(args.from_runs)
    out = output_dir(args.out, marks=ARTIFACT_MARKS) if args.out is not None else ARTIFACT_DIR
    _model, report = train(n_per_class=args.n_per_class, seed=args.seed, out_dir=out,
                           progress=True, labelled=labelled)
    test = report["test"]
    print(json.dumps({"artifact": str(out), "macro_f1": test["full"]["macro_f1"],
                      "macro_f1_first_night": test["first_night"]["macro_f1"],
                      "transient_vs_variable_first_night":
                          test["first_night"]["transient_vs_variable_accuracy"],
                      "ece": test["full"]["ece"], "ece_first_night": test["first_night"]["ece"],
                      "randomised_surveys": {
                          "macro_f1": report["test_random"]["full"]["macro_f1"],
                          "macro_f1_first_night":
                              report["test_random"]["first_night"]["macro_f1"]},
                      "labelled_light_curves": report.get("n_labelled", 0),
                      "seeds": report["seeds"]}))
    return 0


def _read_labelled(dirs: list[str]):
    """The labelled light curves of earlier runs (their labelled.csv), merged."""

    if not dirs:
        return None
    paths = []
    for d in dirs:
        p = existing_dir(d, "--from-runs") / "labelled.csv"
        if not p.is_file():
            raise UsageError(f"{d}: no labelled.csv (not a run with follow-up)")
        paths.append(p)
    try:
        return read_labelled(paths)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _train_policy(args) -> int:
    out = (output_dir(args.out, marks=ARTIFACT_MARKS) if args.out is not None
           else POLICY_ARTIFACT_DIR)
    try:
        report = train_policy(load_config(), out, Path("out/policy-train"),
                              iterations=args.iterations, seed=args.seed,
                              ray_address=args.ray_address, nights=args.nights)
    except RayUnreachable as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps({"artifact": str(out), **{k: report[k] for k in
                                               ("iterations", "nights", "seconds",
                                                "record_seconds")},
                      "final_episode_return_mean": report["episode_return_mean"][-1]}))
    return 0
