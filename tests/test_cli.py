"""The command line's promises for bad input: exit status 2, one line on stderr saying
what is wrong (naming the config field), no traceback; and ``--help`` everywhere.

Every invocation here fails before any simulation starts, so each takes about a second.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_brain

from brain.config import DEFAULT_CONFIG


def _assert_one_line_error(proc, command: str | None, *needles: str) -> str:
    """Exit 2, exactly one stderr line ``brain <command>: error: ...`` naming every
    needle, and no traceback anywhere. ``command=None``: the program-level prefix
    ``brain: error:`` (argparse reports unrecognized arguments there) is accepted too."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    prefixes = ("brain: error: ", "brain simulate: error: ") if command is None else (
        f"brain {command}: error: ",)
    assert lines[0].startswith(prefixes), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _default_data() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "array.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def _simulate(config_path: Path | str, tmp_path: Path):
    out = tmp_path / "out"
    proc = run_brain("simulate", "--config", str(config_path), "--quiet", "--out", str(out))
    assert not out.exists(), "a failed run must not write its output directory"
    return proc


# Bad configs ----------------------------------------------------------------------------
def test_missing_config_file(tmp_path):
    """A config path that does not exist is named in the error."""
    missing = tmp_path / "nope.yaml"
    _assert_one_line_error(_simulate(missing, tmp_path), "simulate", str(missing),
                           "not found")


def test_yaml_syntax_error(tmp_path):
    """Broken YAML is reported with its line, not as a parser traceback."""
    text = DEFAULT_CONFIG.read_text().replace("fov_deg2: 12.0", "fov_deg2: [12.0", 1)
    _assert_one_line_error(_simulate(_write(tmp_path, text), tmp_path), "simulate",
                           "not valid YAML", "line")


def test_config_not_a_mapping(tmp_path):
    """A YAML file that is a list, not a mapping, is refused in one line."""
    _assert_one_line_error(_simulate(_write(tmp_path, "- a\n- b\n"), tmp_path), "simulate",
                           "mapping")


def _mutated(mutate) -> dict:
    data = _default_data()
    mutate(data)
    return data


@pytest.mark.parametrize(("mutate", "needles"), [
    (lambda d: d["sites"][1].update(lat_deg=-95.0), ("sites.1.lat_deg", "-95")),
    (lambda d: d["camera"].update(focal_length_mm=500), ("camera.focal_length_mm",)),
    (lambda d: d.update(telescopes=54), ("telescopes",)),
    (lambda d: d["sites"][0].update(climate="martian"), ("climate", "martian")),
    (lambda d: d["mount"].update(max_rate_deg_s=-5), ("mount.max_rate_deg_s",)),
    (lambda d: d["limits"].pop("min_alt_deg"), ("limits.min_alt_deg",)),
    (lambda d: d["survey"].update(exposure_s="long"), ("survey.exposure_s",)),
], ids=["lat-range", "unknown-camera-key", "unknown-top-key", "unknown-climate",
        "negative-rate", "missing-field", "wrong-type"])
def test_bad_config_names_the_field(tmp_path, mutate, needles):
    """Out-of-range values, unknown keys, unknown climates, missing fields and wrong
    types each fail in one line that names the offending field."""
    path = _write(tmp_path, _mutated(mutate))
    _assert_one_line_error(_simulate(path, tmp_path), "simulate", *needles)


def test_clear_weather_needs_a_clear_climate(tmp_path):
    """``--weather clear`` with a config that defines no 'clear' climate fails in one
    line naming it, instead of failing mid-run."""
    path = _write(tmp_path, _mutated(lambda d: d["climates"].pop("clear")))
    out = tmp_path / "out"
    proc = run_brain("simulate", "--config", str(path), "--weather", "clear", "--quiet",
                     "--out", str(out))
    _assert_one_line_error(proc, "simulate", "clear")
    assert not out.exists()


def test_load_config_raises_config_error_naming_the_field(tmp_path):
    """The library call raises ConfigError (a ValueError) with a one-line message."""
    from brain.config import ConfigError, load_config

    path = _write(tmp_path, _mutated(lambda d: d["sites"][2].update(lat_deg=-91)))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "sites.2.lat_deg" in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_shipped_config_is_the_contract_array():
    """The default config loads and is the 54-telescope array of docs/contracts.md."""
    from brain.config import load_config

    cfg = load_config()
    assert cfg.name == "sitian-54"
    assert [s.id for s in cfg.sites] == ["xl", "lh", "mz"]
    assert len(cfg.groups) * len(cfg.camera.bands) == 54
    assert (cfg.camera.fov_deg2, cfg.camera.readout_s, cfg.survey.exposure_s) == (12, 1, 30)


# Bad arguments ---------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["--nights", "0"], "--nights"),
    (["--nights", "many"], "--nights"),
    (["--start", "2026-13-45"], "2026-13-45"),
    (["--policy", "nope"], "nope"),
    (["--weather", "foggy"], "foggy"),
    (["--seed", "-1"], "--seed"),
    (["--frobnicate"], "--frobnicate"),  # argparse: reported at the program level
], ids=["nights-0", "nights-text", "bad-date", "bad-policy", "bad-weather", "bad-seed",
        "unknown-option"])
def test_bad_simulate_arguments(tmp_path, args, needle):
    """Bad simulate arguments fail in one line naming the argument."""
    out = tmp_path / "out"
    proc = run_brain("simulate", *args, "--quiet", "--out", str(out))
    _assert_one_line_error(proc, None if needle == "--frobnicate" else "simulate", needle)
    assert not out.exists()


def test_replay_of_a_directory_that_is_not_a_run(tmp_path):
    """Replaying a directory without a recorded environment fails in one line."""
    src = tmp_path / "not-a-run"
    src.mkdir()
    (src / "notes.txt").write_text("hello\n")
    proc = run_brain("replay", str(src), "--policy", "greedy", "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "replay", str(src))


def test_replay_of_a_missing_directory(tmp_path):
    """Replaying a directory that does not exist says so in one line."""
    proc = run_brain("replay", str(tmp_path / "gone"), "--policy", "greedy",
                     "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "replay", "not found")


def test_replay_into_its_own_directory(tmp_path):
    """Replay must not overwrite the run it replays."""
    proc = run_brain("replay", str(tmp_path), "--policy", "greedy", "--out", str(tmp_path))
    _assert_one_line_error(proc, "replay", "--out")


def test_replay_needs_a_policy_and_out(tmp_path):
    """``--policy`` and ``--out`` are required for a replay (argparse, one line)."""
    proc = run_brain("replay", str(tmp_path))
    _assert_one_line_error(proc, "replay", "required")


def test_replay_of_an_unknown_policy(tmp_path):
    """An unknown replay policy is refused in one line naming it."""
    proc = run_brain("replay", str(tmp_path), "--policy", "nope", "--out", str(tmp_path / "o"))
    _assert_one_line_error(proc, "replay", "nope")


def test_bench_of_an_unknown_name():
    """An unknown benchmark name is refused in one line."""
    _assert_one_line_error(run_brain("bench", "no_such_benchmark"), "bench")


def test_unknown_or_missing_command():
    """``brain`` with no command or an unknown one fails in one line."""
    for args in ([], ["frobnicate"]):
        proc = run_brain(*args)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("brain: error: "), proc.stderr
        assert "Traceback" not in proc.stderr


# Help --------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [[], ["simulate"], ["replay"], ["bench"]],
                         ids=["brain", "simulate", "replay", "bench"])
def test_help(args):
    """``--help`` works on the program and every command, exits 0, prints usage."""
    proc = run_brain(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: brain"), proc.stdout[:200]
    assert proc.stderr == ""


def test_help_lists_the_options_of_the_contract():
    """simulate's help documents the options docs/contracts.md promises."""
    out = run_brain("simulate", "--help").stdout
    for opt in ("--config", "--nights", "--seed", "--start", "--policy", "--out",
                "--weather", "--quiet"):
        assert opt in out, opt
    for policy in ("rl", "greedy", "uncertainty", "brightest", "random"):
        assert policy in out, policy


def test_console_script_is_installed():
    """The ``brain`` console script sits next to the interpreter and runs."""
    import subprocess

    script = Path(sys.executable).parent / "brain"
    assert script.is_file(), script
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and "simulate" in proc.stdout
