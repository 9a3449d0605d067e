"""The gate at thousands of enrolled requests: enrolled modules built and cached, and their accuracy at N.

`lethe bench scale` drives it and adds the server's figures (latency, memory, activation time).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearning.artifacts import load_module, save_module
from unlearning.backbones import Backbone
from unlearning.cagul.config import CagulConfig
from unlearning.cagul.enrollment import EnrollmentConfig, enroll
from unlearning.cagul.gate import CagulGate
from unlearning.cagul.module import CagulModule
from unlearning.cagul.trainer import CagulTrainer
from unlearning.cagul.verification import PROBE_LIMIT, PROBES, upper_bound
from unlearning.world.people import lookalike_identity
from unlearning.world.population import benign_population, draw_identities, enrolled_people, photos_of, stream
from unlearning.world.requests import forget_data, world_benign_set, world_retain_set
from unlearning.world.store import World

Log = Callable[[str], None]
ENROLLED_FILE = "enrolled.json"


@dataclass(frozen=True)
class ScalePlan:
    enrolled: int = 10_000
    strangers: int = 800
    lookalikes: int = 800
    changed: int = 400
    calibration: int = 500
    negatives: int = 3000
    world_lookalikes: int = 1500  # the world's own look-alike portraits, enrollment negatives too
    sampled: int = 1000  # enrolled subjects whose held-out photo measures the TPR at each N
    enrollment: EnrollmentConfig = field(default_factory=EnrollmentConfig)

    @classmethod
    def smoke(cls, enrolled: int) -> ScalePlan:
        """Every stage on a tenth of the photos: a smoke run of the bench's code, its figures not for reporting."""
        return cls(
            enrolled=enrolled,
            strangers=80,
            lookalikes=80,
            changed=40,
            calibration=50,
            negatives=300,
            world_lookalikes=150,
            sampled=enrolled,
        )

    def key(self, fingerprint: str) -> str:
        data = {
            "fingerprint": fingerprint,
            "enrolled": self.enrolled,
            "negatives": self.negatives,
            "world_lookalikes": self.world_lookalikes,
            "calibration": self.calibration,
            "enrollment": asdict(self.enrollment),
            "version": 3,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def template_module(world: World, backbone: Backbone, root: Path, log: Log) -> CagulModule:
    """One module trained as a request trains it (world person p000): its encoder is every enrolled module's."""
    directory = root / f"template-{backbone.fingerprint()[:12]}"
    if not (directory / "manifest.json").is_file():
        log("training the template module on p000 (the encoder every enrolled module carries)")
        module, _ = CagulTrainer(backbone).train(forget_data(world, ["p000"]), world_retain_set(world, ["p000"]))
        save_module(module, directory, backbone.fingerprint())
    return load_module(directory, backbone.fingerprint())


def enrolled_modules(world: World, backbone: Backbone, plan: ScalePlan, root: Path, log: Log) -> list[tuple[str, str]]:
    """(path, checksum) of `plan.enrolled` modules, each with its own trained gate; built once and cached."""
    fingerprint = backbone.fingerprint()
    directory = root / f"enrolled-{plan.key(fingerprint)}"
    index = directory / ENROLLED_FILE
    if index.is_file():
        return [tuple(row) for row in json.loads(index.read_text())["modules"]]  # type: ignore[misc]
    template = template_module(world, backbone, root, log)
    people = enrolled_people(world, plan.enrolled)
    # Streams of their own: no enrollment negative is a benign photo the figures are measured on.
    rng = stream(world, 0, "enrollment-negatives")
    negatives = [photos_of(world, i, 1, rng)[0] for i in draw_identities(world, plan.negatives, 0, "negatives")]
    negatives += world.lookalike_images(plan.world_lookalikes, seed=1)
    lookalikes = [
        [photos_of(world, lookalike_identity(rng, p.identity, rng.choice([3, 4, 5])), 1, rng)[0] for _ in range(2)]
        for p in people
    ]
    rng = stream(world, 0, "calibration-views")
    calibration = [photos_of(world, i, 1, rng)[0] for i in draw_identities(world, plan.calibration, 0, "calibration")]
    started = time.perf_counter()

    def progress(phase: str, done: int, total: int, _loss: float) -> None:
        log(f"enrollment: {phase} {done}/{total} ({time.perf_counter() - started:.0f} s)")

    gates = enroll(
        backbone,
        [p.photos for p in people],
        negatives,
        calibration,
        template.config,
        plan.enrollment,
        progress,
        lookalikes,
    )
    rows = []
    for i, discriminator in enumerate(gates):
        module = CagulModule(template.config, template.n_tokens, template.hidden_size, template.identity_dim)
        module.discriminator.load_state_dict(discriminator.state_dict())
        module.encoder.load_state_dict(template.encoder.state_dict())
        manifest = save_module(module, directory / f"m{i:05d}", fingerprint, extra={"enrolled": i})
        rows.append((str(directory / f"m{i:05d}"), manifest["digest"]))
    seconds = round(time.perf_counter() - started, 1)
    index.write_text(json.dumps({"seconds": seconds, "plan": asdict(plan), "modules": rows}))
    log(f"{len(rows)} modules enrolled and saved in {seconds} s")
    return rows


def module_bytes(n_tokens: int = 576, hidden_size: int = 4096, identity_dim: int = 128) -> dict[str, int]:
    """Bytes of one default module's artifact at a checkpoint's shapes (LLaVA-1.5-7B: 576 tokens x 4096), with the
    identity embeddings of the probes verification stores beside it."""
    module = CagulModule(CagulConfig(), n_tokens, hidden_size, identity_dim)
    probes = {PROBES: {"embeddings": torch.zeros(PROBE_LIMIT, identity_dim)}}
    with tempfile.TemporaryDirectory() as directory:
        save_module(module, directory, "shape-only", tensors=probes)
        stored = sum(f.stat().st_size for f in Path(directory).iterdir())
    params = module.num_parameters()
    return {"n_tokens": n_tokens, "hidden_size": hidden_size, "parameters": params, "artifact_bytes": stored}


@dataclass
class Material:
    """Visual tokens of the sampled subjects' held-out photos and of the benign population."""

    heldout: torch.Tensor
    heldout_owner: torch.Tensor  # index of each held-out photo's enrolled module
    benign: torch.Tensor
    calibration: torch.Tensor  # the world's benign set, which a served set's thresholds are calibrated on


def material(world: World, backbone: Backbone, plan: ScalePlan) -> Material:
    people = enrolled_people(world, plan.enrolled)
    # Every one of the first `sampled // 5` subjects and then an even spread: each N has its share of samples.
    step = max(1, plan.enrolled // plan.sampled)
    owners = sorted(set(range(min(plan.enrolled, plan.sampled // 5))) | set(range(0, plan.enrolled, step)))
    benign = benign_population(world, [p.identity for p in people], plan.strangers, plan.lookalikes, plan.changed)
    return Material(
        backbone.tokens_of([people[i].heldout for i in owners]),
        torch.tensor(owners),
        backbone.tokens_of(benign),
        backbone.tokens_of([im for im, _ in world_benign_set(world)]),
    )


def accuracy(gate: CagulGate, n: int, material: Material, batch: int = 256) -> dict[str, Any]:
    """Held-out TPR (of subjects among the first `n`), candidate recall@k and the system false-fire rate."""
    ids = gate.module_ids
    own = {m: i for i, m in enumerate(ids)}
    sample = material.heldout_owner < n
    tokens, owners = material.heldout[sample], material.heldout_owner[sample]
    hits = recalled = nearest = 0
    for start in range(0, len(tokens), batch):
        chunk = tokens[start : start + batch]
        expected = torch.tensor([own[f"m{int(o):05d}"] for o in owners[start : start + batch]])
        chosen, _ = gate.route(chunk)
        hits += int((chosen == expected).sum())
        recalled += int(gate.recalled(chunk, expected).sum())
        nearest += int(gate.recalled(chunk, expected, k=1).sum())
    fires = sum(
        int((gate.route(material.benign[i : i + batch])[0] >= 0).sum()) for i in range(0, len(material.benign), batch)
    )
    n_benign, n_sampled = len(material.benign), len(tokens)
    return {
        "tpr": round(hits / n_sampled, 4) if n_sampled else None,
        "recall_at_k": round(recalled / n_sampled, 4) if n_sampled and 0 < gate.candidates < n else None,
        # The identity embedding alone: is the subject's own prototype the nearest of all n?
        "identification_at_1": round(nearest / n_sampled, 4) if n_sampled and n > 1 else None,
        "fpr": round(fires / n_benign, 4),
        "fpr_upper95": round(upper_bound(fires, n_benign, 0.95), 4),
        "sampled": n_sampled,
        "benign": n_benign,
    }
