"""What a worker process loads once and keeps: the frozen base model, the retain set, loaded modules, the database."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import torch
from sqlalchemy.orm import Session, sessionmaker

from core.crypto import MasterKey, master_key
from core.db import make_engine, make_session_factory
from core.settings import Settings, get_settings
from unlearning.artifacts import GatePart, load_gate, load_rewrite, load_tensors, read_manifest, tensors_file
from unlearning.backbones import Backbone, load_backbone
from unlearning.cagul import CagulModule
from unlearning.cagul.gate import CagulGate, Rewrite
from unlearning.cagul.module import ModuleRewrite
from unlearning.cagul.verification import PROBES, Canaries, StoredProbes, VerifyConfig
from unlearning.data import RetainSet
from unlearning.retain import RetainFolder, RetainSource
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import serving_model_dir, world_dir
from unlearning.world.requests import WorldRetain

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    backbone: Backbone
    fingerprint: str
    source: RetainSource
    master_key: MasterKey
    _retain: dict[tuple[str, ...], RetainSet] = field(default_factory=dict)
    _gates: dict[tuple[str, str], tuple[GatePart, StoredProbes | None]] = field(default_factory=dict)
    _encoders: OrderedDict[tuple[str, str], ModuleRewrite] = field(default_factory=OrderedDict)

    def people_in(self, photo_hashes: Iterable[str]) -> list[str]:
        """Retain-set people whose photos are among `photo_hashes`: filed for deletion, so never retain or canary."""
        return self.source.people_in(photo_hashes)

    def retain_set(self, filed: list[str], own: list[str]) -> RetainSet:
        """The operator's retain set without the `filed` people; those filed by other requests stay negatives."""
        others = sorted(set(filed) - set(own))
        key = (*sorted(filed), "|", *others)
        if key not in self._retain:  # look-alike negatives take seconds to render: once per process and key
            if filed:
                log.info("retain set without %s: their photos are filed for deletion", sorted(filed))
            self._retain[key] = self.source.retain_set(sorted(filed), others)
        return self._retain[key]

    def canaries(self, exclude: list[str]) -> Canaries:
        images, questions = self.source.canaries(exclude, self.settings.verify_canaries)
        return Canaries(images, questions)

    @cached_property
    def _benign(self) -> tuple[torch.Tensor, list[str | None]]:
        """Visual tokens of the benign set and the person each photo shows: rendered and encoded once."""
        benign = self.source.benign()
        return self.backbone.tokens_of([im for im, _ in benign]), [who for _, who in benign]

    def benign_tokens(self, exclude: list[str]) -> torch.Tensor:
        """The benign set's tokens without photos of the `exclude` people (filed for deletion)."""
        tokens, owners = self._benign
        excluded = set(exclude)
        return tokens[torch.tensor([who not in excluded for who in owners], dtype=torch.bool)]

    def verify_config(self) -> VerifyConfig:
        s = self.settings
        return VerifyConfig(
            max_leak=s.verify_max_leak,
            confidence=s.verify_confidence,
            min_cases=s.verify_min_cases,
            target_cases=s.verify_target_cases,
            min_gate_tpr=s.verify_min_gate_tpr,
            min_retain_identical=s.verify_min_retain_identical,
            canaries=s.verify_canaries,
            max_benign_fire=s.verify_max_benign_fire,
            max_new_tokens=s.verify_max_new_tokens,
            min_photos_to_hold_out=s.verify_min_photos_to_hold_out,
        )

    def gate_part(self, path: str, digest: str) -> tuple[GatePart, StoredProbes | None]:
        """A served module's gate and stored probes, loaded once per artifact digest (checked against the
        registry); its encoder and prefix load only when its gate fires (`rewrite`)."""
        key = (path, digest)
        if key not in self._gates:
            part = load_gate(path, self.fingerprint, digest, self.settings.device)
            probes = None
            if tensors_file(PROBES) in read_manifest(path, digest)["files"]:
                stored = load_tensors(path, PROBES, expected_digest=digest)
                inputs = stored.get("embeddings")
                if inputs is None:  # a token gate's, or an identity gate's stored before embeddings were
                    inputs = stored["tokens"]
                    if part.discriminator.input_kind == "identity":
                        inputs = self.backbone.identity_embeddings(inputs.to(self.backbone.device)).cpu()
                probes = StoredProbes.of(part.discriminator, inputs)
            self._gates[key] = (part, probes)
        return self._gates[key]

    def rewrite(self, path: str, digest: str) -> ModuleRewrite:
        """A served module's encoder and prefix, the least recently used dropped past the server's cache bound."""
        key = (path, digest)
        if key in self._encoders:
            self._encoders.move_to_end(key)
        else:
            self._encoders[key] = load_rewrite(path, digest, self.settings.device)
            while len(self._encoders) > max(1, self.settings.engine_encoder_cache):
                self._encoders.popitem(last=False)
        return self._encoders[key]

    def gate(self, rows: dict[str, tuple[str, str]], extra: dict[str, CagulModule]) -> CagulGate:
        """The gate of the served set `rows` (adapter id -> artifact) plus the `extra` modules, built as the server
        builds its own: gates loaded alone, encoders on first use."""

        def rewrite(module_id: str) -> Rewrite:
            return extra[module_id] if module_id in extra else self.rewrite(*rows[module_id])

        gate = CagulGate(
            self.backbone,
            candidates=self.settings.gate_candidates,
            rewrites=rewrite,
            known_names=self.source.known_names(),
        )
        for adapter_id, (path, digest) in rows.items():
            part, _ = self.gate_part(path, digest)
            gate.add_discriminator(adapter_id, part.discriminator, part.config, aliases=part.aliases)
        for module_id, module in extra.items():
            gate.add_module(module_id, module)
        return gate


@cache
def _retain_source(retain_dir: Path | None, world_root: Path) -> RetainSource:
    if retain_dir is not None:
        return RetainFolder(retain_dir)
    return WorldRetain(World(world_root))


def retain_source(settings: Settings) -> RetainSource:
    """The operator's retain folder (LETHE_RETAIN_DIR), else the reference world's retain people: read and checked
    once per process."""
    return _retain_source(settings.retain_dir, world_dir(settings.data_dir, WORLD_PRESETS[settings.world]))


@cache
def runtime() -> Runtime:
    settings = get_settings()
    source = retain_source(settings)  # a bad retain folder stops the worker before minutes of model loading
    model_dir = serving_model_dir(settings.model_path, settings.data_dir, WORLD_PRESETS[settings.world])
    backbone = load_backbone(model_dir, device=settings.device, dtype=settings.resolved_model_dtype)
    backbone.freeze()
    return Runtime(
        settings=settings,
        sessions=make_session_factory(make_engine(settings.resolved_database_url)),
        backbone=backbone,
        fingerprint=backbone.fingerprint(),
        source=source,
        master_key=master_key(settings),
    )
