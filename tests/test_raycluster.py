"""Beyond one machine: ``brain evaluate --ray-address`` joins a running Ray cluster and
spreads the seeds over its nodes (docs/runbook.md, "Evaluation and training on a Ray
cluster").

The cluster is two Ray nodes on this machine's loopback, started as a user starts them
(``ray start --head``, then ``ray start --address``), each with one CPU and a resource of
its own; every process the test started (found by the cluster's private auth token in
its environment) is ended at teardown. ``ray stop`` is not used: it would also stop any
other Ray on the machine.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, brain_cmd

RAY = str(Path(sys.executable).with_name("ray"))
NODE_RESOURCES = ("head_node", "second_node")

NODES_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False,
         configure_logging=False)
print(json.dumps([{"id": n["NodeID"], "alive": n["Alive"],
                   "resources": sorted(n["Resources"])} for n in ray.nodes()]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_started(proc: subprocess.Popen, log: Path, what: str, timeout_s: float = 180):
    """Until ``ray start --block`` says it is up (it then blocks until signalled)."""
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if "block forever" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode}): {log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"{what} not up after {timeout_s} s: {log.read_text()[-3000:]}")


def _nodes(address: str, env: dict) -> list[dict]:
    r = subprocess.run([sys.executable, "-c", NODES_SCRIPT, address], env=env,
                       capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ours(token: str) -> list[int]:
    """The processes started for this cluster: their environment holds its token."""
    mark = f"RAY_AUTH_TOKEN={token}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if mark in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:  # gone, or not ours to read
                pass
    return pids


def _stop(procs: list[subprocess.Popen], token: str) -> None:
    """SIGTERM each ``ray start --block`` (it drains and stops its node's processes),
    then SIGKILL whatever of the cluster is left."""
    for p in reversed(procs):  # the second node first, then the head
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(30)
    t_end = time.monotonic() + 60
    while (left := _ours(token)) and time.monotonic() < t_end:
        if time.monotonic() > t_end - 45:  # 15 s of grace, then kill
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.5)


@pytest.fixture(scope="module")
def two_nodes():
    """(address, environment, nodes) of a two-node Ray cluster on loopback."""
    token = secrets.token_hex(32)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=token, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    tmp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
              "--disable-usage-stats"]
    procs = []
    try:
        for k, name in enumerate(NODE_RESOURCES):
            args = ([RAY, "start", "--head", "--port", str(port), "--temp-dir", str(tmp),
                     "--include-dashboard", "false",
                     "--ray-client-server-port", str(_free_port())]
                    if k == 0 else [RAY, "start", "--address", address])
            args += [*common, "--resources", json.dumps({name: 1}),
                     "--dashboard-agent-listen-port", str(_free_port())]
            log = tmp / f"{name}.log"
            with log.open("w") as fh:
                procs.append(subprocess.Popen(args, env=env, stdout=fh,
                                              stderr=subprocess.STDOUT,
                                              start_new_session=True))
            _wait_started(procs[-1], log, f"ray start ({name})")
        t_end = time.monotonic() + 180
        while len(alive := [n for n in _nodes(address, env) if n["alive"]]) < 2:
            assert time.monotonic() < t_end, f"the second node never joined: {alive}"
            time.sleep(1)
        yield address, env, alive
    finally:
        _stop(procs, token)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not _ours(token), "processes of the test cluster were left behind"


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    """Xinglong alone, two groups, a sparse sky: a seed takes seconds."""
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["name"] = "cluster-test"
    d["sites"] = [dict(d["sites"][0], groups=2)]
    d["spectrographs"] = [d["spectrographs"][0]]
    d.setdefault("sky", {})["density_scale"] = 0.05
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.slow
def test_evaluate_spreads_seeds_over_the_cluster(two_nodes, small_config, tmp_path):
    address, env, nodes = two_nodes
    out = tmp_path / "ev"
    r = subprocess.run(brain_cmd("evaluate", "--config", str(small_config), "--policies",
                                 "greedy,random", "--seeds", "9001..9004", "--out", str(out),
                                 "--ray-address", address),
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    with (out / "evaluation.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # The contract's columns unchanged, then where each seed ran.
    assert list(rows[0]) == ["policy", "seed", "spectra", "hours", "reward",
                             "reward_per_hour", "coverage_deg2_per_30min", "macro_f1",
                             "node", "node_id"]
    assert len(rows) == 8 and {x["node"] for x in rows} == {socket.gethostname()}
    by_seed = {}
    for x in rows:  # both policies of a seed ran in one task, on one node
        assert by_seed.setdefault(x["seed"], x["node_id"]) == x["node_id"], rows
    name = {n["id"]: next(k for k in NODE_RESOURCES if k in n["resources"]) for n in nodes}
    ran_on = {s: name.get(i, i) for s, i in by_seed.items()}
    assert set(ran_on.values()) == set(NODE_RESOURCES), ran_on
    data = json.loads((out / "evaluation.json").read_text())
    assert len({x["node_ip"] for x in data}) == 1 and data[0]["node_ip"]  # one machine


@pytest.mark.parametrize("command", [["evaluate", "--seeds", "9001"], ["train", "policy"]])
def test_unreachable_ray_address_is_one_line(command, tmp_path):
    """Nothing listens at the address: refused at once (Ray would retry for minutes)."""
    with socket.socket() as s:  # a port that was free a moment ago, and is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    r = subprocess.run(brain_cmd(*command, "--out", str(out), "--ray-address",
                                 f"127.0.0.1:{port}"),
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"brain {command[0]}: error: no Ray cluster at 127.0.0.1:")
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists()
