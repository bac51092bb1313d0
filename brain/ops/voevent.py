"""Alerts as IVOA VOEvent 2.0 packets, validated against the VOEvent 2.0 XSD before they
are returned (docs/alerts.md)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import voeventparse as vp
from lxml import etree

from brain.ops.alert_records import (
    BAND_UCD,
    DEFAULT_STREAM,
    TAXONOMY_URI,
    Alert,
    FollowupAlert,
    ivorn,
    mjd_of,
    utc_datetime,
)

# VOEvent 2.0 -------------------------------------------------------------------------
_SCHEMA_LOCK = threading.Lock()


_VOEVENT_SCHEMA = etree.XMLSchema(etree.fromstring(vp.definitions.v2_0_schema_str))


def validate_voevent(xml: bytes) -> None:
    """Raise ValueError (first schema error, with its line) unless ``xml`` is a valid
    VOEvent 2.0 packet."""
    try:
        root = etree.fromstring(xml)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not a VOEvent 2.0 packet: not well-formed XML ({exc})") from None
    with _SCHEMA_LOCK:  # an XMLSchema's error log is shared state
        if _VOEVENT_SCHEMA.validate(root):
            return
        err = _VOEVENT_SCHEMA.error_log.filter_from_errors()[0]
    raise ValueError(f"not a valid VOEvent 2.0 packet: line {err.line}: {err.message}")


def _param(name, value, unit=None, ucd=None, description=None):
    if isinstance(value, float | np.floating):
        value = repr(float(value))  # shortest exact form: floats round-trip
        p = vp.Param(name, value, unit=unit, ucd=ucd, dataType="float")
    else:
        p = vp.Param(name, value, unit=unit, ucd=ucd)
    if description:
        p.Description = description
    return p


def _site_location(site_id: str, site) -> etree._Element:
    """A ground site as STC: geodetic longitude, latitude (deg) and height (m)."""
    if isinstance(site, tuple | list):
        lat, lon, height = site
    else:
        lat, lon, height = site.lat_deg, site.lon_deg, site.height_m
    loc = etree.Element("ObservatoryLocation", id=site_id)
    etree.SubElement(loc, "AstroCoordSystem", id="UTC-GEOD-TOPO")
    ac = etree.SubElement(loc, "AstroCoords", coord_system_id="UTC-GEOD-TOPO")
    pos = etree.SubElement(ac, "Position3D", unit="deg-deg-m")
    for tag, text in (("Name1", "longitude"), ("Name2", "latitude"), ("Name3", "elevation")):
        etree.SubElement(pos, tag).text = text
    v = etree.SubElement(pos, "Value3")
    for tag, x in (("C1", lon), ("C2", lat), ("C3", height)):
        etree.SubElement(v, tag).text = repr(float(x))
    return loc


def to_voevent(alert: Alert, stream: str = DEFAULT_STREAM, role: str = "observation",
               sites: Mapping[str, Any] | None = None) -> bytes:
    """The alert as a VOEvent 2.0 packet (UTF-8 XML), validated against the VOEvent 2.0
    schema (ValueError if it is not valid, e.g. an unknown ``role``).

    ``sites``: site id -> an object with ``lat_deg``, ``lon_deg``, ``height_m`` (the
    config's ``sites``) or a (lat, lon, height) tuple; a follow-up's site is given as
    its ObservatoryLocation, a classification (three sites) as ``GEOSURFACE``."""
    fu = isinstance(alert, FollowupAlert)
    v = vp.Voevent(stream=stream, stream_id=alert.local_id, role=role)
    vp.set_who(v, date=utc_datetime(alert.t), author_ivorn=stream)
    vp.set_author(v, title="SiTian Brain", shortName="SiTian")
    v.Who.Description = ("SiTian Brain: control software of the SiTian 54-telescope "
                         "survey array")
    w = v.What
    w.append(_param("object_id", alert.object_id, ucd="meta.id;meta.main",
                    description="SiTian Brain object id"))
    w.append(_param("predicted_class", alert.predicted_class, ucd="src.class",
                    description="most probable class of the SiTian taxonomy"))
    w.append(_param("p_predicted", alert.p_predicted, ucd="stat.probability"))
    if fu:
        w.append(_param("target_id", alert.target_id, ucd="meta.id",
                        description="spectroscopic target id"))
        w.append(_param("telescope", alert.telescope, ucd="meta.id;instr.tel",
                        description="spectroscopic telescope (device id)"))
        for name, val, unit, ucd, desc in (
                ("mag", alert.mag, "mag", "phot.mag", "latest AB magnitude"),
                ("exposure", alert.exposure_s, "s", "time.duration;obs.exposure", None),
                ("end_mjd", None if alert.t_end is None else mjd_of(alert.t_end), "d",
                 "time.end;obs", "planned end of the spectrum (UTC)"),
                ("priority", alert.priority, None, "stat.weight",
                 "expected science reward")):
            if val is not None:
                w.append(_param(name, float(val), unit=unit, ucd=ucd, description=desc))
    else:
        w.append(_param("n_detections", alert.n_detections, ucd="meta.number;obs"))
        for name, val, ucd in (("first_detection_mjd", alert.t_first, "time.start;obs"),
                               ("last_detection_mjd", alert.t_last, "time.end;obs")):
            if val is not None:
                w.append(_param(name, mjd_of(val), unit="d", ucd=ucd))
        if alert.last_mag:
            w.append(vp.Group([_param(f"mag_{b}", m, unit="mag",
                                      ucd=BAND_UCD.get(b, "phot.mag"),
                                      description=f"latest AB magnitude in {b}")
                               for b, m in alert.last_mag.items()],
                              name="last_mag", type="photometry"))
    if alert.probabilities:
        w.append(vp.Group([_param(c, p, ucd="stat.probability")
                           for c, p in alert.probabilities.items()],
                          name="class_probabilities", type="classification"))
    site = alert.site if fu else None
    location = (site if sites is not None and site in sites else
                vp.definitions.observatory_location.geosurface)
    vp.add_where_when(v, vp.Position2D(alert.ra_deg, alert.dec_deg,
                                       alert.pos_err_arcsec / 3600.0, "deg", "UTC-ICRS-TOPO"),
                      utc_datetime(alert.t_obs), location)
    if location == site:
        odl = v.WhereWhen.ObsDataLocation
        odl.replace(odl.ObservatoryLocation, _site_location(site, sites[site]))
    vp.add_how(v, descriptions=(
        f"Spectroscopic follow-up commanded to {alert.telescope} by the SiTian Brain "
        "follow-up manager." if fu else
        "SiTian survey array: 18 co-pointed g/r/i groups at Xinglong, Lenghu and "
        "Muztagh-ata; detections associated into light curves and classified by the "
        "SiTian Brain transient classifier."))
    # voeventparse's add_why/add_citations use collections.Iterable (gone in Python
    # 3.10) on anything but a string: the elements are appended directly.
    etree.SubElement(v, "Why").append(vp.Inference(
        probability=alert.p_predicted, relation="identified", name=alert.predicted_class,
        concept=TAXONOMY_URI + alert.predicted_class))
    if fu and alert.classification_ivorn:
        etree.SubElement(v, "Citations").append(vp.EventIvorn(
            alert.classification_ivorn, vp.definitions.cite_types.followup))
    try:
        xml = vp.dumps(v, pretty_print=True)
    except (ValueError, TypeError) as exc:  # e.g. text that XML cannot carry
        raise ValueError(f"cannot write VOEvent {ivorn(alert, stream)}: {exc}") from None
    validate_voevent(xml)
    return xml
