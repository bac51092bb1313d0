"""The array description: sites, groups, telescopes, camera, mount, depth, limits,
weather climate and spectrographs.

This is the world as configured (it lives in the shared domain package because the
brain, the drivers and the simulator all read it). Every number of
the default ``sitian-54`` array (docs/contracts.md) is a field here with its unit in
its name.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Band = Literal["g", "r", "i"]
SITE_ID_PATTERN = r"^[a-z][a-z0-9]{0,15}$"


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(Strict):
    id: str = Field(pattern=SITE_ID_PATTERN, description="short site id used in device ids")
    name: str = Field(min_length=1, max_length=64)
    lat_deg: float = Field(ge=-90, le=90)
    lon_deg: float = Field(ge=-180, le=180, description="east positive")
    height_m: float = Field(ge=-500, le=9000)
    groups: int = Field(ge=0, le=99, description="telescope groups (g, r, i) at this site")
    climate: str = Field(default="typical", description="name of a climate in `climates`")


class Camera(Strict):
    fov_deg2: float = Field(gt=0.5, le=100, description="square field of view (deg^2)")
    readout_s: float = Field(ge=0, le=120)
    bands: tuple[Band, ...] = ("g", "r", "i")

    @property
    def side_deg(self) -> float:
        return math.sqrt(self.fov_deg2)


class Mount(Strict):
    max_rate_deg_s: float = Field(gt=0, le=50)
    accel_deg_s2: float = Field(gt=0, le=50)
    settle_s: float = Field(ge=0, le=120)


class Depth(Strict):
    """5-sigma point-source depth at zenith, dark sky, reference seeing and exposure."""

    m5_zenith_dark: dict[Band, float]
    sky_dark_mag_arcsec2: dict[Band, float] = Field(
        description="dark night-sky brightness (AB mag/arcsec^2)")
    extinction_mag_per_airmass: dict[Band, float]
    moon_sky_factor: dict[Band, float] = Field(
        description="moonlight brightening relative to V (Krisciunas & Schaefer 1991)")
    reference_seeing_arcsec: float = Field(gt=0)
    reference_exposure_s: float = Field(gt=0)
    cloud_extinction_mag: float = Field(ge=0, le=10, description="extinction at cloud=1 (mag)")


class Limits(Strict):
    min_alt_deg: float = Field(ge=0, lt=90)
    max_sun_alt_deg: float = Field(ge=-90, le=0)
    min_moon_sep_deg: float = Field(ge=0, le=180)
    max_wind_mps: float = Field(gt=0)
    max_humidity: float = Field(gt=0, le=1)
    rain_ok: bool = False
    max_weather_age_s: float = Field(gt=0)


class Climate(Strict):
    """A site's weather statistics (drives the seeded weather process)."""

    clear_fraction: float = Field(ge=0, le=1, description="long-run fraction of clear time")
    closed_fraction: float = Field(ge=0, le=1, description="fraction of time unsafe")
    mean_spell_h: float = Field(gt=0, le=240, description="mean length of a weather spell (h)")
    wind_mean_mps: float = Field(ge=0)
    wind_sd_mps: float = Field(ge=0)
    humidity_mean: float = Field(ge=0, le=1)
    humidity_sd: float = Field(ge=0, le=1)
    seeing_median_arcsec: float = Field(gt=0)
    seeing_sigma_dex: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _fractions(self) -> Climate:
        if self.clear_fraction + self.closed_fraction > 1:
            raise ValueError("clear_fraction + closed_fraction must be at most 1")
        return self


class Spectrograph(Strict):
    site: str = Field(pattern=SITE_ID_PATTERN)
    aperture_m: float = Field(gt=0)
    base_exposure_s: float = Field(gt=0, description="exposure at the reference magnitude")
    reference_mag: float
    min_exposure_s: float = Field(gt=0)
    max_exposure_s: float = Field(gt=0)
    acquisition_s: float = Field(ge=0)
    label_limit_mag: float = Field(description="faintest magnitude that returns a label")


class Survey(Strict):
    exposure_s: float = Field(gt=0, le=3600)
    cadence_min: float = Field(gt=0, le=1440, description="revisit goal (min)")
    ring_fit: Literal["center", "edge"] = Field(
        default="center", description="how fields per declination ring are counted")


class SkyModel(Strict):
    """The simulated transient and variable sky (``simulator.population``)."""

    density_scale: float = Field(default=1.0, gt=0, le=10,
                                 description="multiplies every class's rate or density")
    faint_limit_mag: float = Field(default=21.8, ge=15, le=30,
                                   description="faintest source simulated (AB r; nothing "
                                               "fainter reaches 5 sigma in 30 s here)")
    bogus_per_exposure: float = Field(default=2.0, ge=0, le=1000,
                                      description="mean artefact detections per exposure")


class ArrayConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sites: tuple[Site, ...] = Field(min_length=1)
    camera: Camera
    mount: Mount
    depth: Depth
    limits: Limits
    survey: Survey
    climates: dict[str, Climate]
    spectrographs: tuple[Spectrograph, ...] = ()
    sky: SkyModel = SkyModel()

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, sites: tuple[Site, ...]) -> tuple[Site, ...]:
        ids = [s.id for s in sites]
        if len(set(ids)) != len(ids):
            raise ValueError(f"site ids must be unique, got {ids}")
        return sites

    @model_validator(mode="after")
    def _references(self) -> ArrayConfig:
        for s in self.sites:
            if s.climate not in self.climates:
                raise ValueError(f"site {s.id!r} names unknown climate {s.climate!r}")
        site_ids = {s.id for s in self.sites}
        for sp in self.spectrographs:
            if sp.site not in site_ids:
                raise ValueError(f"spectrograph names unknown site {sp.site!r}")
        for name in ("m5_zenith_dark", "sky_dark_mag_arcsec2", "extinction_mag_per_airmass",
                     "moon_sky_factor"):
            missing = set(self.camera.bands) - set(getattr(self.depth, name))
            if missing:
                raise ValueError(f"depth.{name} lacks band(s) {sorted(missing)}")
        return self

    # Derived, frequently used views ------------------------------------------------
    @property
    def groups(self) -> list[GroupId]:
        """Every telescope group, in a fixed order (site order, then group number)."""
        return [GroupId(s.id, n) for s in self.sites for n in range(1, s.groups + 1)]

    def site(self, site_id: str) -> Site:
        for s in self.sites:
            if s.id == site_id:
                return s
        raise KeyError(site_id)


class GroupId(NamedTuple):
    """A telescope group: (site, number), spelled as in docs/contracts.md device ids."""

    site: str
    number: int

    @property
    def name(self) -> str:
        return f"{self.site}.g{self.number:02d}"

    def telescope(self, band: str) -> str:
        return f"{self.name}.{band}"
