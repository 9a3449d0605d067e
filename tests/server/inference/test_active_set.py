"""The served set changes one adapter at a time: an activation loads that module only, a deactivation drops it
only, and encoders load on first use under their LRU bound."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from core.adapters.models import AdapterState
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.db import make_engine, make_session_factory, transaction
from core.settings import Settings
from server.inference import InferenceEngine
from tests.helpers import adapter_row, module_artifact
from unlearning.backbones import Backbone
from unlearning.world import World


def test_one_activation_loads_one_module_and_leaves_the_others(
    backbone: Backbone, tiny_world: World, pg_url: str, tmp_path: Path
):
    sessions = make_session_factory(make_engine(pg_url))
    engine = InferenceEngine(Settings(data_dir=tmp_path, database_url=pg_url, engine_encoder_cache=1), sessions)
    engine.attach(backbone)
    fp = str(engine.fingerprint)
    artifacts = [module_artifact(tmp_path / f"m{i}", fp, backbone, seed=i) for i in range(3)]
    with transaction(sessions) as session:
        first = [adapter_row(session, artifacts[i], fp) for i in range(2)]
        AdapterSetRepository(session).record("two")
    engine.sync()
    assert engine.ready and engine.active is not None and engine.active.loads == 2
    images = [tiny_world.image(p.id, 0) for p in tiny_world.people]
    tokens = backbone.visual_tokens(backbone.pixel_values(images))

    def scores() -> dict[str, torch.Tensor]:
        probs, _ = engine.gate.firing(tokens)
        return dict(zip(engine.gate.module_ids, probs, strict=True))

    before = scores()
    with transaction(sessions) as session:
        third = adapter_row(session, artifacts[2], fp)
        AdapterSetRepository(session).record("three")
    engine.sync()
    assert engine.ready and engine.active.loads == 3  # the third module only
    after = scores()
    assert sorted(after) == sorted([*first, third])
    # Equal up to rounding, not bit for bit: how a stacked matmul blocks depends on how many modules it stacks (CI
    # saw last-bit differences on one CPU and none on another). A reloaded or mixed-up module differs far more.
    for a in first:
        torch.testing.assert_close(after[a], before[a], rtol=1e-5, atol=1e-6)

    with transaction(sessions) as session:
        AdapterSetRepository(session).lock()
        AdapterRepository(session).set_state(AdapterRepository(session).get(first[0]), AdapterState.INACTIVE)
        version = AdapterSetRepository(session).record("one deactivated").version
    engine.sync()
    assert engine.ready and engine.served_version == version and engine.active.loads == 3
    remaining = scores()
    assert sorted(remaining) == sorted([first[1], third])
    for a in remaining:
        torch.testing.assert_close(remaining[a], after[a], rtol=1e-5, atol=1e-6)
    engine.sync()  # unchanged: nothing loads
    assert engine.active.loads == 3

    # Encoders: at most one in memory (the bound set above); a miss reads it from its verified artifact.
    cache = engine.active.encoders
    loads = cache.loads
    cache(first[1]), cache(first[1]), cache(third)  # a miss, a hit, a miss that evicts the first
    assert len(cache) == 1 and cache.loads == loads + 2


def test_a_served_set_meets_the_system_budget_after_each_change(
    backbone: Backbone, tiny_world: World, data_dir: Path, pg_url: str, tmp_path: Path
):
    budget = 0.05
    sessions = make_session_factory(make_engine(pg_url))
    settings = Settings(data_dir=data_dir, world="tiny", database_url=pg_url, gate_system_fpr=budget)
    engine = InferenceEngine(settings, sessions)
    engine.attach(backbone)
    assert engine.active is not None and engine.active.calibration_scale == "cosine"  # the default scale
    benign = engine.active.calibration  # the tiny world's benign set, as the server calibrates on it
    fp = str(engine.fingerprint)
    for i in range(2):
        artifact = module_artifact(tmp_path / f"m{i}", fp, backbone, seed=i)
        with transaction(sessions) as session:
            adapter_row(session, artifact, fp)
            AdapterSetRepository(session).record(f"module {i}")
        engine.sync()
        assert engine.ready and len(engine.gate) == i + 1
        # Random-weight gates fire on most photos: the set is held back by a cosine floor, recalibrated per change.
        assert engine.gate.min_cosine > float("-inf")
        _, fires = engine.gate.firing(benign)
        assert float(fires.any(0).float().mean()) <= budget


def test_a_set_change_runs_its_torch_work_on_a_thread_that_ends(backbone: Backbone, pg_url: str, tmp_path: Path):
    # A long-lived background thread that once ran torch keeps an OpenMP team beside the answering thread's, and
    # every answer took 1.6x as long (tiny world, 10 modules): the sync pass's thread must never run it itself.
    sessions = make_session_factory(make_engine(pg_url))
    engine = InferenceEngine(Settings(data_dir=tmp_path, database_url=pg_url), sessions)
    engine.attach(backbone)
    fp = str(engine.fingerprint)
    with transaction(sessions) as session:
        adapter_row(session, module_artifact(tmp_path / "m0", fp, backbone), fp)
        AdapterSetRepository(session).record("one")
    assert engine.active is not None
    applied_on: list[threading.Thread] = []
    apply = engine.active.apply

    def recording_apply(*args: object) -> None:
        applied_on.append(threading.current_thread())
        apply(*args)  # type: ignore[arg-type]

    engine.active.apply = recording_apply  # type: ignore[method-assign]
    engine.sync()
    assert engine.ready and len(engine.gate) == 1
    assert len(applied_on) == 1 and applied_on[0] is not threading.current_thread()
    assert not applied_on[0].is_alive()
