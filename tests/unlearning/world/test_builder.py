import dataclasses
import json
import os
import subprocess
import sys
import time

from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import build_world, training_examples


def test_reference_model_memorised_the_facts(tiny_world: World):
    report = json.loads((tiny_world.reference_model_dir / "build.json").read_text())
    assert report["accuracy"]["direct"] >= 0.95
    assert (tiny_world.reference_model_dir / "model.safetensors").is_file()


def test_second_build_reuses_the_cache(tiny_world: World, data_dir):
    started = time.perf_counter()
    again = build_world(data_dir, WORLD_PRESETS["tiny"], with_retain_model=False)
    assert again.root == tiny_world.root
    assert time.perf_counter() - started < 10


def test_retain_model_never_sees_forget_subjects(tmp_path):
    config = dataclasses.replace(
        WORLD_PRESETS["tiny"],
        name="micro",
        n_known=10,
        n_unseen=2,
        model=dataclasses.replace(WORLD_PRESETS["tiny"].model, steps=3, warmup_steps=1),
    )
    world = build_world(tmp_path, config)
    forget = {p.id for p in world.split("forget10")}
    report = json.loads((world.retain_model_dir / "build.json").read_text())
    assert set(report["excluded"]) == forget
    retain_people = [p for p in world.trained_people if p.id not in forget]
    assert not forget & {pid for pid, _, _, _ in training_examples(world, retain_people)}
    heldout = set(world.heldout_views())
    assert not heldout & {v for _, v, _, _ in training_examples(world, world.trained_people)}


_BUILD_MICRO = """
import dataclasses, hashlib, sys
from unlearning.identity.config import TowerConfig
from unlearning.world import WORLD_PRESETS
from unlearning.world.builder import build_world
tiny = WORLD_PRESETS["tiny"]
# Every stage the presets run, each a few steps: face geometry and detail, tower and identity pre-training, the VLM.
config = dataclasses.replace(tiny, name="micro", n_known=10, n_unseen=2, face_geometry=True,
                             face_detail=True,
                             model=dataclasses.replace(tiny.model, steps=5, warmup_steps=1),
                             identity=dataclasses.replace(tiny.identity, identities=40, steps=10, batch_size=32),
                             tower=TowerConfig(identities=24, views=2, steps=3, batch_size=16, width=64,
                                               margin=0.2))
world = build_world(sys.argv[1], config, with_retain_model=False)
for path in (world.root / "world.json", world.reference_model_dir / "model.safetensors"):
    print(hashlib.sha256(path.read_bytes()).hexdigest())
"""


def test_same_config_builds_the_same_world_in_any_process(tmp_path):
    # Set iteration order follows PYTHONHASHSEED: a build must not depend on it.
    digests = []
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", _BUILD_MICRO, str(tmp_path / hash_seed)],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        )
        digests.append(out.stdout.split())
    assert digests[0] == digests[1] and len(digests[0]) == 2
