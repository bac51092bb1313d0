"""The classifier as a Ray actor: a real local Ray, batching, same answers as in-process,
and a restart that loses nothing."""

import os
import time

import numpy as np
import pytest

from policies.classifier import TransientClassifier
from policies.lightcurve_sets import make_set


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    from brain.ops import hosting

    ray = hosting.connect(num_cpus=2, temp_dir=tmp_path_factory.mktemp("ray"))
    yield ray
    ray.shutdown()


def _requests(n_req=12):
    data = make_set(10, seed=77)
    out = []
    for r in range(n_req):
        ids = np.arange(r, data.n, n_req)
        sel = np.isin(data.obj, ids)
        _, local = np.unique(data.obj[sel], return_inverse=True)
        out.append((local, data.mjd[sel], data.band[sel], data.mag[sel], data.err[sel],
                    ids.size))
    return out


def test_actor_batches_and_matches_in_process(ray_local):
    from brain.ops.hosting import start_classifier

    ray = ray_local
    remote = start_classifier(name="clf-test-batch", max_wait_s=0.05)
    local = TransientClassifier.load()
    reqs = _requests()
    refs = [remote.handle.predict.remote(*r) for r in reqs]
    got = ray.get(refs, timeout=120)
    for r, p in zip(reqs, got, strict=True):
        assert p.shape == (r[5], 14)
        np.testing.assert_allclose(p, local.predict(*r), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(p.sum(axis=1), 1.0)
    stats = ray.get(remote.handle.stats.remote())
    assert stats["requests"] == len(reqs)
    assert stats["batches"] < len(reqs), stats  # concurrent requests were merged
    # The brain's interface: same call, same answer.
    np.testing.assert_allclose(remote.predict(*reqs[0]), local.predict(*reqs[0]))


def test_actor_restarts_after_its_process_dies(ray_local):
    from brain.ops.hosting import start_classifier

    ray = ray_local
    remote = start_classifier(name="clf-test-restart")
    req = _requests(3)[0]
    before = remote.predict(*req)
    pid = ray.get(remote.handle.__ray_call__.remote(lambda self: os.getpid()))
    ray.kill(remote.handle, no_restart=False)
    deadline = time.time() + 60
    while True:
        try:
            after = remote.predict(*req)
            break
        except ray.exceptions.RayActorError:
            assert time.time() < deadline, "actor did not come back"
            time.sleep(0.5)
    np.testing.assert_allclose(after, before)
    assert ray.get(remote.handle.__ray_call__.remote(lambda self: os.getpid())) != pid


def test_bad_request_fails_alone(ray_local):
    from brain.ops.hosting import start_classifier

    ray = ray_local
    remote = start_classifier(name="clf-test-bad", max_wait_s=0.05)
    good = _requests(2)[0]
    bad = (np.array([0, 0, 0]), np.array([1.0, 2.0, 3.0]), np.array([0, 7, 0]),
           np.array([20.0, 20.0, 20.0]), np.array([0.1, 0.1, 0.1]), 1)
    ref_bad = remote.handle.predict.remote(*bad)
    ref_good = remote.handle.predict.remote(*good)
    assert ray.get(ref_good, timeout=60).shape == (good[5], 14)
    # A band index out of range is an error for that request only, reported, not a hang.
    with pytest.raises(ValueError, match="band indices"):
        ray.get(ref_bad, timeout=60)


def test_policy_actor_answers_as_in_process(ray_local):
    """The RL policy as a Ray actor chooses exactly what the in-process network chooses,
    and asks the manager for the same shortlist."""
    from brain.ops.hosting import start_policy
    from policies.rl import RLPolicy

    rng = np.random.default_rng(3)
    local = RLPolicy.load()
    remote = start_policy("rl", actor_name="policy-test")
    assert remote.max_candidates == local.max_candidates and remote.name == "rl"
    for _ in range(5):
        table = _random_table(rng, int(rng.integers(1, 30)))
        assert remote.choose(table) == local.choose(table)


def test_policy_actor_restart_mid_night_loses_no_decision(ray_local):
    """The follow-up manager keeps asking the policy actor through a kill: every decision
    is answered (Ray retries the call on the restarted actor) and equals the in-process
    policy's."""
    from brain.ops.hosting import start_policy
    from policies.followup import make_policy

    ray = ray_local
    rng = np.random.default_rng(11)
    local = make_policy("rl", 0)
    remote = start_policy("rl", actor_name="policy-restart-test")
    answers = []
    for k in range(12):
        if k == 5:
            ray.kill(remote.handle, no_restart=False)
        table = _random_table(rng, int(rng.integers(2, 25)))
        answers.append((remote.choose(table), local.choose(table)))
    assert len(answers) == 12
    assert all(a == b for a, b in answers)


def _random_table(rng, n: int):
    """A seeded candidate table of ``n`` rows, for policy answers to compare."""
    from policies.candidates import CandidateTable

    prob = rng.dirichlet(np.ones(14), n)
    return CandidateTable(
        np.arange(n), rng.uniform(0, 360, n), rng.uniform(-20, 60, n),
        rng.uniform(16, 21.5, n), rng.normal(0, 0.3, n), rng.uniform(0, 3, n),
        rng.integers(3, 60, n), rng.integers(1, 3, n), prob, rng.uniform(30, 90, n),
        rng.uniform(300, 500, n), rng.uniform(300, 3600, n), rng.uniform(0, 3e4, n),
        rng.uniform(0, 1, n), prob @ rng.uniform(0, 50, 14), 3e4, 3e4)
