"""The deployment files (deploy/, docs/runbook.md) against the code they drive.

Each file is read the way its consumer reads it and checked against the real thing: the
`ray up` configs against the JSON schema Ray ships and Ray's own config preparation,
their `ray start` lines against Ray's own command-line parser, the RayService's Serve
config against Serve's schema and its import path against brain/planner/api.py, every
`brain` command line (systemd units, the KubeRay daemon container, the runbook) against
the parser of brain/cli/__init__.py, the hardware bridges' units (INDI, ASCOM Alpaca, their
weather stations) against the bridges' own parsers and checks, the site configs against
``load_config``. Nothing here starts Ray, a daemon or a unit; the whole module takes a few
seconds.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from brain import cli
from brain.cli import common as cli_common
from brain.config import load_config, with_climate
from drivers import bridgecli

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
SITES = DEPLOY / "sites"
RUNBOOK = ROOT / "docs" / "runbook.md"
VENV_BIN = "/opt/sitian/venv/bin/"


# Helpers ---------------------------------------------------------------------------
def parse_brain(argv: list[str]):
    """``brain`` arguments through the real parser and the CLI's own link checks (what
    ``brain run``/``sim-drivers`` refuse before doing anything); a refusal fails."""
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"brain {' '.join(argv)!r} is refused by brain/cli/ (exit {exc.code})")
    if args.command in ("run", "sim-drivers"):
        try:
            cli_common.clock_args(args)
        except cli.UsageError as exc:
            pytest.fail(f"brain {args.command}: {exc}")
    return args


def under(path: str, roots: list[str]) -> bool:
    p = Path(path)
    return any(p == Path(r) or Path(r) in p.parents for r in roots)


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit or drop-in: {section: [(key, value), ...]} in file order, with
    backslash continuations joined and comment lines dropped (systemd.syntax(7))."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    logical, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if pending and line.startswith(("#", ";")):
            continue  # comments inside a continued line are skipped
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: the last line ends with a backslash"
    for line in logical:
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}: bad section line {line!r}"
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), \
            f"{path.name}: not a KEY=value line: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def effective(*files: Path) -> dict[str, dict[str, list[str]]]:
    """A unit with its drop-ins applied: list settings accumulate, an empty assignment
    resets them (``ExecStart=`` then ``ExecStart=...`` in a drop-in)."""
    out: dict[str, dict[str, list[str]]] = {}
    for f in files:
        for section, items in read_unit(f).items():
            sec = out.setdefault(section, {})
            for key, value in items:
                if value == "":
                    sec[key] = []
                else:
                    sec.setdefault(key, []).append(value)
    return out


def one(unit: dict, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def words(unit: dict, section: str, key: str) -> list[str]:
    return [w for v in unit.get(section, {}).get(key, []) for w in v.split()]


def read_env(path: Path) -> dict[str, str]:
    """An EnvironmentFile: KEY=value lines; comments only on their own lines."""
    env = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), \
            f"{path.name}:{n}: not KEY=value: {line!r}"
        assert " #" not in value, f"{path.name}:{n}: systemd keeps inline comments in values"
        env[key] = value
    return env


def exec_argv(command: str, env: dict[str, str], instance: str = "") -> list[str]:
    """An Exec line as systemd runs it: prefixes dropped, %-specifiers and ${VAR}
    expanded, a lone $VAR split into words (systemd.service(5), "Command lines")."""
    command = command.lstrip("-@:+!")
    command = command.replace("%%", "\0").replace("%i", instance).replace("%I", instance)
    assert "%" not in command, f"unexpanded specifier in {command!r}"
    command = command.replace("\0", "%")

    def braced(m):
        assert m.group(1) in env, f"${{{m.group(1)}}} is not set by the EnvironmentFile"
        return env[m.group(1)]

    out = []
    for word in shlex.split(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", braced, command)):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        out += env.get(m.group(1), "").split() if m else [word]
    return out


SITIAN_ENV = read_env(SYSTEMD / "sitian.env")

# The brain units as installed: alone, and on a `ray up` head with the drop-in.
BRAIN_UNITS = {
    "sitian-brain.service": [SYSTEMD / "sitian-brain.service"],
    "sitian-brain.service+ray-cluster.conf": [
        SYSTEMD / "sitian-brain.service",
        SYSTEMD / "sitian-brain.service.d" / "ray-cluster.conf"],
    "sitian-sim-drivers.service": [SYSTEMD / "sitian-sim-drivers.service"],
}


@dataclass(frozen=True)
class Bridge:
    """A hardware bridge's template unit: the module it runs, its env files' directory
    (/etc/sitian/DIR/%i.env, example deploy/systemd/DIR/INSTANCE.env) and the example's
    instance: a telescope's device id, or with ``--weather`` the site id."""

    template: str
    module: str
    env_dir: str
    instance: str
    weather: bool = False

    @property
    def env_file(self) -> Path:
        return SYSTEMD / self.env_dir / f"{self.instance}.env"

    @property
    def unit_name(self) -> str:  # the example's instance, e.g. sitian-indi@xl.g01.g.service
        return self.template.replace("@.", f"@{self.instance}.")


BRIDGES = {b.template: b for b in [
    Bridge("sitian-indi@.service", "drivers.indi", "indi", "xl.g01.g"),
    Bridge("sitian-alpaca@.service", "drivers.alpaca", "alpaca", "xl.g01.g"),
    Bridge("sitian-indi-weather@.service", "drivers.indi", "indi-weather", "xl", weather=True),
    Bridge("sitian-alpaca-weather@.service", "drivers.alpaca", "alpaca-weather", "xl",
           weather=True),
]}
TELESCOPE_BRIDGES = [name for name, b in BRIDGES.items() if not b.weather]
ALL_UNITS = {**BRAIN_UNITS, **{name: [SYSTEMD / name] for name in BRIDGES}}


def brain_args(files: list[Path]):
    unit = effective(*files)
    argv = exec_argv(one(unit, "Service", "ExecStart"), SITIAN_ENV)
    assert argv[0] == VENV_BIN + "brain", f"ExecStart runs {argv[0]}, not the install's brain"
    return unit, parse_brain(argv[1:])


def parse_bridge(module: str, argv: list[str]):
    """A bridge's arguments through its own parser and the checks its ``main`` makes before
    it connects anything (drivers/bridgecli.py's, and the Alpaca bridge's own); a refusal
    fails."""
    cli_module = importlib.import_module(f"{module}.cli")
    parser = cli_module.build_parser()
    try:
        args = parser.parse_args(argv)
        bridgecli.check_telescope_args(parser, args)
        if module == "drivers.alpaca":
            cli_module.check_alpaca_photometry(parser, args)
        else:
            bridgecli.check_photometry_args(parser, args)
    except SystemExit as exc:
        pytest.fail(f"python -m {module} refuses {argv} (exit {exc.code})")
    return args


def bridge_args(name: str, env: dict[str, str] | None = None):
    """The bridge unit ``name`` and its ExecStart's parsed arguments, with the example env
    file (or ``env``) for the example's instance."""
    bridge = BRIDGES[name]
    unit = effective(SYSTEMD / name)
    env = read_env(bridge.env_file) if env is None else env
    argv = exec_argv(one(unit, "Service", "ExecStart"), SITIAN_ENV | env, bridge.instance)
    assert argv[:3] == [VENV_BIN + "python", "-m", bridge.module]
    return unit, parse_bridge(bridge.module, argv[3:])


# deploy/ holds no code -------------------------------------------------------------
def test_deploy_holds_only_configuration():
    allowed = {".yaml", ".yml", ".json", ".service", ".conf", ".env"}
    for f in DEPLOY.rglob("*"):
        if f.is_file():
            assert f.suffix in allowed, f"{f.relative_to(ROOT)}: deploy/ holds no code"
            assert not f.read_text(errors="replace").startswith("#!"), \
                f"{f.relative_to(ROOT)} is a script"


# Ray cluster (`ray up`) ------------------------------------------------------------
RAY_CONFIGS = ["cluster.yaml", "cluster-onprem.yaml"]


def ray_config(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "ray" / name).read_text())


@pytest.mark.parametrize("name", RAY_CONFIGS)
def test_ray_cluster_config_validates_against_rays_schema(name):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = ray_config(name)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    try:
        jsonschema.validate(config, schema)
    except jsonschema.ValidationError as exc:
        pytest.fail(f"{name} at {'/'.join(map(str, exc.absolute_path))}: {exc.message}")
    # What `ray up` does before it launches anything: defaults, node types, checks.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_cluster_has_head_cpu_and_gpu_types():
    config = ray_config("cluster.yaml")
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and set(types) == {"head", "cpu", "gpu"}
    assert types["gpu"]["resources"].get("GPU", 0) >= 1
    assert types["cpu"]["resources"].get("CPU", 0) >= 1
    assert "GPU" not in types["cpu"]["resources"] and "GPU" not in types["head"]["resources"]
    assert types["gpu"]["min_workers"] >= 1, "the planner needs a GPU node at all times"
    # The GPU type's own setup list replaces the common one: it must still install.
    assert any("make" in c and "install" in c for c in types["gpu"]["worker_setup_commands"])


def test_onprem_cluster_uses_the_single_local_node_type():
    config = ray_config("cluster-onprem.yaml")
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert "available_node_types" not in config, "Ray's local provider refuses node types"


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, without leading VAR=value assignments."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    cmds, cur = [], []
    for tok in lex:
        if tok and set(tok) <= set("();<>|&"):
            cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    cmds.append(cur)
    out = []
    for c in cmds:
        while c and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", c[0]):
            c = c[1:]
        if c:
            out.append(c)
    return out


@pytest.mark.parametrize("name", RAY_CONFIGS)
def test_ray_start_commands_are_accepted_by_ray(name):
    from ray.scripts.scripts import start, stop

    config = ray_config(name)
    started = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for line in config[key]:
            for argv in shell_commands(line):
                if Path(argv[0]).name != "ray":
                    continue
                assert argv[0] == VENV_BIN + "ray", f"{argv[0]}: not the install's ray"
                command = {"start": start, "stop": stop}[argv[1]]
                try:  # Ray's own click parser: unknown or malformed options raise
                    ctx = command.make_context(argv[1], argv[2:])
                except Exception as exc:
                    pytest.fail(f"{name} {key}: `{' '.join(argv)}`: {exc}")
                if argv[1] == "start":
                    started[key] = ctx.params
    head, worker = started["head_start_ray_commands"], started["worker_start_ray_commands"]
    assert head["head"] and head["port"] == 6379
    assert head["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    assert not worker["head"] and worker["address"] == "$RAY_HEAD_IP:6379"
    # The daemon (its unit with the cluster drop-in) joins this Ray on this port and
    # must be allowed to write the Ray session directory.
    unit, args = brain_args(BRAIN_UNITS["sitian-brain.service+ray-cluster.conf"])
    assert args.ray_address.endswith(f":{head['port']}")
    assert under(head["temp_dir"], words(unit, "Service", "ReadWritePaths")), \
        f"Ray's --temp-dir {head['temp_dir']} is not writable by sitian-brain.service"
    # ... and the unit the head restarts is the one shipped.
    units = {m for line in config["head_start_ray_commands"]
             for m in re.findall(r"sitian-[\w@.-]+\.service", line)}
    assert units == {"sitian-brain.service"}


# KubeRay ---------------------------------------------------------------------------
def kuberay_docs() -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "kuberay" / "rayservice.yaml").read_text()))


def rayservice() -> dict:
    (rs,) = [d for d in kuberay_docs() if d.get("kind") == "RayService"]
    return rs


def serve_config():
    """serveConfigV2 through Serve's own schema; its models ignore unknown keys, so a
    misspelt key is looked for here."""
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    raw = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    for items, model in [([raw], ServeDeploySchema), (raw["applications"], ServeApplicationSchema),
                         ([d for a in raw["applications"] for d in a.get("deployments", [])],
                          DeploymentSchema)]:
        for item in items:
            unknown = set(item) - set(model.model_fields)
            assert not unknown, f"serveConfigV2: unknown {model.__name__} keys {unknown}"
    return ServeDeploySchema.model_validate(raw)


def test_rayservice_structure():
    import ray

    rs = rayservice()
    assert rs["apiVersion"] == "ray.io/v1"
    assert isinstance(rs["spec"]["serveConfigV2"], str), "serveConfigV2 is a YAML string"
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__, "rayVersion is the installed Ray's"
    head = cluster["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), \
        "rayStartParams values are strings"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}

    def containers(group):
        return group["template"]["spec"]["containers"]

    def gpus(c):
        return int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))

    gpu = groups["gpu"]
    assert gpus(containers(gpu)[0]) >= 1
    spec = gpu["template"]["spec"]
    assert spec["nodeSelector"], "GPU pods go to GPU nodes"
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert all(gpus(c) == 0 for c in containers(groups["cpu"]) + containers(head))
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    images = {c["image"] for g in [head, *groups.values()] for c in containers(g)}
    assert images and all(i.startswith("registry.example.org/sitian-brain:") for i in images)
    assert "placeholder" in (DEPLOY / "kuberay" / "rayservice.yaml").read_text().lower()


def test_rayservice_serve_config_puts_the_planner_on_a_gpu():
    config = serve_config()  # Serve's own schema: a bad field fails here
    (app,) = config.applications
    deployments = {d.name: d for d in app.deployments}
    assert deployments["planner"].ray_actor_options.num_gpus == 1
    assert app.route_prefix == "/"
    # The import path names something that exists (imported, not run: no Ray).
    module, _, attr = app.import_path.partition(":")
    target = getattr(importlib.import_module(module), attr, None)
    assert callable(target), f"{app.import_path} does not exist in {module}"


def test_rayservice_deployment_names_are_those_of_the_serve_app():
    import ray

    from brain.planner.api import build_app

    # The ingress, bound to the planner: a graph of deployments, built without Ray.
    ingress = build_app(load_config(SITES / "rehearsal-xl.yaml"))._bound_deployment
    names = {ingress.name} | {a._bound_deployment.name for a in ingress.init_args
                              if hasattr(a, "_bound_deployment")}
    assert {d.name for d in serve_config().applications[0].deployments} == names
    assert not ray.is_initialized()


def test_rayservice_import_path_is_a_serve_app_builder():
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application

    (app,) = serve_config().applications
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    args = dict(app.args, config=str(SITES / "rehearsal-xl.yaml"))  # the file, here
    assert isinstance(call_user_app_builder_with_args_if_necessary(builder, args),
                      Application)


def test_rayservice_daemon_container_runs_a_valid_brain_run():
    rs = rayservice()
    pod = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (brain,) = [c for c in pod["containers"] if c.get("command") == ["brain"]]
    args = parse_brain(brain["args"])
    assert args.command == "run"
    assert args.ray_address == "127.0.0.1:6379", "the daemon joins the head's Ray"
    assert args.api_port == 0, "the RayService owns the Serve app"
    assert pod.get("shareProcessNamespace") is True, "the driver finds the raylet by process"
    mounts = {m["mountPath"]: m["name"] for m in brain["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert args.config in mounts and args.keys in mounts
    journal_dir = str(Path(args.journal).parent)
    assert "persistentVolumeClaim" in volumes[mounts[journal_dir]], "the journal persists"
    claims = {d["metadata"]["name"] for d in kuberay_docs()
              if d.get("kind") == "PersistentVolumeClaim"}
    assert volumes[mounts[journal_dir]]["persistentVolumeClaim"]["claimName"] in claims
    ray_tmp = {m["name"] for c in pod["containers"] for m in c["volumeMounts"]
               if m["mountPath"] == "/tmp/ray"}
    assert len(ray_tmp) == 1 and "emptyDir" in volumes[ray_tmp.pop()]
    ports = {p["containerPort"] for p in brain["ports"]}
    assert {int(args.router.rsplit(":", 1)[1]), int(args.pub.rsplit(":", 1)[1])} <= ports


# systemd -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_UNITS)
def test_unit_parses_and_is_hardened(name):
    unit = effective(*ALL_UNITS[name])
    assert one(unit, "Unit", "Description")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    service = unit["Service"]
    assert one(unit, "Service", "User") == "sitian"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "ProtectHome") == "yes"
    assert one(unit, "Service", "PrivateTmp") == "yes"
    assert one(unit, "Service", "Restart") in ("on-failure", "always")
    assert "/etc/sitian/sitian.env" in service["EnvironmentFile"]
    assert len(service["ExecStart"]) == 1


def test_brain_unit_stops_cleanly_and_restarts_on_failure():
    unit = effective(SYSTEMD / "sitian-brain.service")
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "KillMode") == "mixed"  # SIGTERM to the daemon alone
    # The night jobs' close waits up to 10 s + 10 s: the stop timeout leaves room.
    assert int(one(unit, "Service", "TimeoutStopSec")) >= 30
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"  # bad input: no loop


@pytest.mark.parametrize("name", BRAIN_UNITS)
def test_unit_execstart_is_accepted_by_the_cli(name):
    unit, args = brain_args(BRAIN_UNITS[name])
    assert args.config == "/etc/sitian/sitian.yaml"
    assert args.security == "curve" and args.keys
    # What it writes lies in ReadWritePaths, the rest of the system being read-only.
    rw = words(unit, "Service", "ReadWritePaths")
    written = {"run": lambda: [args.journal], "sim-drivers": lambda: [args.log]}[args.command]()
    for path in written:
        assert path and under(path, rw), f"{name} writes {path}, outside {rw}"
    assert not under(args.keys, rw), "the keys are read-only to the daemon"
    if args.command == "run":
        assert Path(args.journal).parent == Path(one(unit, "Service", "WorkingDirectory"))
        assert args.metrics_port == 9180 and args.hosting == "ray"


def test_sim_drivers_meet_the_brain():
    _, run = brain_args(BRAIN_UNITS["sitian-brain.service"])
    _, drv = brain_args(BRAIN_UNITS["sitian-sim-drivers.service"])
    port = run.router.rsplit(":", 1)[1]
    assert drv.router == f"tcp://127.0.0.1:{port}" and drv.config == run.config
    assert (drv.start, drv.speed) == (run.start, run.speed), "one world clock"
    assert drv.keys != run.keys, "drivers hold a device pair, not the brain's secret"


@pytest.mark.parametrize("name", BRIDGES)
def test_bridge_template_execstart_is_accepted_by_the_bridge(name):
    from brain.shells.daemon import device_specs
    from drivers.endpoint import is_loopback

    bridge = BRIDGES[name]
    unit, args = bridge_args(name)
    assert f"/etc/sitian/{bridge.env_dir}/%i.env" in unit["Service"]["EnvironmentFile"]
    assert args.weather == bridge.weather
    assert not args.photometry, "the example leaves photometry off (commented)"
    assert is_loopback(args.router) or args.keys, "a remote brain needs CURVE keys"
    config = load_config(SITES / "sitian-54.yaml")
    if bridge.weather:
        assert args.site == bridge.instance and args.device_id is None
        device_id = f"{args.site}.wx"  # the bridges' default for --weather
    else:
        device_id = args.device_id
        assert device_id == f"{args.site}.g{args.group:02d}.{args.band}" == bridge.instance
        site = config.site(args.site)
        assert (args.lat, args.lon) == pytest.approx((site.lat_deg, site.lon_deg), abs=0.01)
        if bridge.module == "drivers.alpaca":  # checked in its main(), not a function
            assert args.telescope is not None and args.camera is not None
    spec = device_specs(config).get(device_id)
    assert spec is not None, f"{device_id} is not a device the brain knows"
    assert spec.kind == ("weather" if bridge.weather else "telescope")


@pytest.mark.parametrize("name", TELESCOPE_BRIDGES)
def test_bridge_photometry_example_writes_only_to_the_state_directory(name):
    """The env file's commented PHOTOMETRY_ARGS line, uncommented, is accepted by the
    bridge; it reads the calibration stars from a read-only place and keeps the fields'
    history in the unit's state directory, the one place ProtectSystem=strict leaves it."""
    bridge = BRIDGES[name]
    examples = re.findall(r"^#\s*PHOTOMETRY_ARGS=(.*)$", bridge.env_file.read_text(),
                          flags=re.MULTILINE)
    assert len(examples) == 1, f"{bridge.env_file.name}: one commented PHOTOMETRY_ARGS="
    env = read_env(bridge.env_file)
    assert "PHOTOMETRY_ARGS" not in env
    unit, args = bridge_args(name, env | {"PHOTOMETRY_ARGS": examples[0]})
    assert args.photometry and args.reference and args.frame_history
    assert one(unit, "Service", "ProtectSystem") == "strict"
    state = ["/var/lib/" + d.replace("%i", bridge.instance)
             for d in words(unit, "Service", "StateDirectory")]
    writable = state + words(unit, "Service", "ReadWritePaths")
    assert under(args.frame_history, state), \
        f"--frame-history {args.frame_history} is not in {name}'s state directory {state}"
    assert under(args.reference, ["/etc/sitian"]) and not under(args.reference, writable), \
        "the calibration stars are configuration, read-only to the bridge"


INDI_UNIT = "sitian-indi@.service"
# What a bridge unit runs and where it writes; everything else is the INDI bridge's.
BRIDGE_OWN_SETTINGS = {"ExecStart", "EnvironmentFile", "StateDirectory", "StateDirectoryMode"}


@pytest.mark.parametrize("name", [n for n in BRIDGES if n != INDI_UNIT])
def test_bridge_units_share_the_indi_bridges_hardening(name):
    ref, unit = (effective(SYSTEMD / n)["Service"] for n in (INDI_UNIT, name))

    def common(service):
        return {k: v for k, v in service.items() if k not in BRIDGE_OWN_SETTINGS}

    assert common(unit) == common(ref)
    if BRIDGES[name].weather:  # no photometry: nothing to write
        assert "StateDirectory" not in unit
    else:  # one telescope, one field history, whichever bridge drives it
        assert unit["StateDirectory"] == ref["StateDirectory"]
        assert unit["StateDirectoryMode"] == ref["StateDirectoryMode"]


def test_environment_file_keeps_everything_offline_and_in_writable_places():
    env = SITIAN_ENV
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert "RAY_ADDRESS" not in env, "connect() would join that cluster: the drop-in's job"
    assert env["BRAIN_RAY_TMP"].startswith("/tmp/")  # each unit's private /tmp
    for name, files in BRAIN_UNITS.items():
        unit = effective(*files)
        caches = ["/var/cache/" + d for d in words(unit, "Service", "CacheDirectory")]
        assert env["ASTROPY_CACHE_DIR"] in caches, f"{name} does not create the astropy cache"
        rw = words(unit, "Service", "ReadWritePaths")
        for key in ("SITIAN_MODEL_CACHE", "XDG_CACHE_HOME", "MPLCONFIGDIR", "HF_HOME"):
            assert under(env[key], rw), f"{key}={env[key]} is not writable by {name}"
        configs = ["/etc/" + d for d in words(unit, "Service", "ConfigurationDirectory")]
        assert env["ASTROPY_CONFIG_DIR"] in configs


def test_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed on this machine (Debian: systemd)")
    # The units as installed, with the install's executables standing in (verify checks
    # that each ExecStart binary exists and is executable).
    bin_dir = tmp_path / "opt" / "sitian" / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("brain", "python"):
        (bin_dir / name).symlink_to(sys.executable)
    units = tmp_path / "units"
    for src in SYSTEMD.rglob("*"):
        if src.is_file() and src.suffix in (".service", ".conf"):
            dst = units / src.relative_to(SYSTEMD)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(src.read_text().replace(VENV_BIN, f"{bin_dir}/"))
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{units}:", SYSTEMD_LOG_LEVEL="notice")
    names = ["sitian-brain.service", "sitian-sim-drivers.service",
             *(b.unit_name for b in BRIDGES.values())]
    r = subprocess.run([exe, "verify", "--man=no", *names], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "sitian" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


# Site configs ------------------------------------------------------------------------
ARRAY_SECTIONS = ("sites", "camera", "mount", "depth", "limits", "survey", "climates",
                  "spectrographs", "sky")


@pytest.mark.parametrize("name, sites, telescopes", [
    ("rehearsal-xl.yaml", ["xl"], 6),
    ("sitian-54.yaml", ["xl", "lh", "mz"], 54),
    ("sitian-54-strict.yaml", ["xl", "lh", "mz"], 54),
])
def test_site_config_loads(name, sites, telescopes):
    config = load_config(SITES / name)
    assert [s.id for s in config.sites] == sites
    assert len(config.groups) * len(config.camera.bands) == telescopes
    assert {sp.site for sp in config.spectrographs} == set(sites), "one 4-m per site"
    with_climate(config, "clear")  # `brain sim-drivers --weather clear` works on it


def test_full_site_config_is_the_contracts_default_array():
    ours, default = load_config(SITES / "sitian-54.yaml"), load_config()
    for section in ARRAY_SECTIONS:
        assert getattr(ours, section) == getattr(default, section), section


def test_strict_variant_only_tightens_the_limits():
    strict, default = load_config(SITES / "sitian-54-strict.yaml"), load_config()
    a, b = strict.limits, default.limits
    assert a != b
    assert a.min_alt_deg >= b.min_alt_deg and a.min_moon_sep_deg >= b.min_moon_sep_deg
    assert a.max_sun_alt_deg <= b.max_sun_alt_deg and a.max_wind_mps <= b.max_wind_mps
    assert a.max_humidity <= b.max_humidity and a.max_weather_age_s <= b.max_weather_age_s
    assert not a.rain_ok or b.rain_ok
    # sim weather stations report at least every 60 s: a shorter limit would flap
    assert a.max_weather_age_s > 60


# The runbook -------------------------------------------------------------------------
def runbook_commands() -> list[str]:
    """The command lines of docs/runbook.md: every line of its fenced code blocks, and
    the inline code spans that run the installed brain (``/opt/.../bin/brain ...``;
    a bare `brain ask` in the prose names a command, it is not one)."""
    text = RUNBOOK.read_text()
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    lines = [ln.strip() for block in fenced for ln in block.splitlines() if ln.strip()]
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return lines + [s for s in re.findall(r"`([^`\n]+)`", prose) if "/bin/brain " in s]


def brain_invocations(line: str) -> list[list[str]]:
    """Every ``brain ...`` (or ``/path/bin/brain ...``) simple command of a shell line."""
    out = []
    for argv in shell_commands(line):
        for i, word in enumerate(argv):
            if word == "brain" or word.endswith("/bin/brain"):
                out.append(argv[i + 1:])
                break
    return out


def test_runbook_brain_commands_are_accepted_by_the_cli():
    calls = [argv for line in runbook_commands() for argv in brain_invocations(line)]
    assert {a[0] for a in calls} >= {"keys", "ask"}, calls
    for argv in calls:
        parse_brain(argv)


def test_runbook_names_only_shipped_units_and_files():
    text = RUNBOOK.read_text()
    for unit in set(re.findall(r"sitian-[a-z-]+@?[\w.*<>-]*\.service", text)):
        template = re.sub(r"@.*\.service$", "@.service", unit)
        assert (SYSTEMD / template).is_file(), f"runbook names {unit}; not in deploy/systemd"
    for path in set(re.findall(r"deploy/[\w./-]*\w", text)):
        assert (ROOT / path).exists(), f"runbook names {path}, which does not exist"
    # Flags quoted alone in the prose (`--failsafe-s`) are flags of some brain command.
    commands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    known = {o for p in commands.values() for a in p._actions for o in a.option_strings}
    for flag in set(re.findall(r"`(--[a-z-]+)", text)):
        assert flag in known, f"runbook quotes {flag}, which no brain command takes"
