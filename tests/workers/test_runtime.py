"""What a worker keeps of the served set for verification: each module's gate, loaded once; an encoder only when
its gate fires, as the server loads them."""

from __future__ import annotations

from pathlib import Path

import torch

from core.settings import Settings
from unlearning.artifacts import save_module
from unlearning.backbones import Backbone
from unlearning.cagul import CagulConfig, CagulModule
from unlearning.cagul.verification import PROBES
from unlearning.world import World
from unlearning.world.requests import WorldRetain
from workers.runtime import Runtime


def _module(backbone: Backbone, seed: int) -> CagulModule:
    torch.manual_seed(seed)
    return CagulModule(CagulConfig(), backbone.n_visual_tokens, backbone.hidden_size, backbone.identity_dim)


def test_verification_gates_load_modules_gate_first_and_encoders_on_use(
    tiny_world: World, backbone: Backbone, tmp_path: Path
):
    settings = Settings(data_dir=tmp_path, world="tiny", engine_encoder_cache=1)
    rt = Runtime(settings, None, backbone, backbone.fingerprint(), WorldRetain(tiny_world), None)  # type: ignore[arg-type]
    rows = {}
    for i in range(3):
        manifest = save_module(_module(backbone, i), tmp_path / f"m{i}", backbone.fingerprint())
        rows[f"a{i}"] = (str(tmp_path / f"m{i}"), manifest["digest"])
    new = _module(backbone, 9)
    gate = rt.gate(rows, {"new": new})
    assert sorted(gate.module_ids) == ["a0", "a1", "a2", "new"] and len(rt._encoders) == 0
    assert rt.gate(rows, {}).module_ids != gate.module_ids and len(rt._gates) == 3  # gates read once
    assert gate.encoder("new") is new.encoder and len(rt._encoders) == 0
    first = gate.encoder("a0")
    stored = _module(backbone, 0).encoder.state_dict()
    assert all(torch.equal(v, stored[k].to(torch.bfloat16).to(v.dtype)) for k, v in first.state_dict().items())
    gate.encoder("a1")
    assert list(rt._encoders) == [rows["a1"]]  # bounded as the server's cache: the least recent one went


def test_stored_probes_load_as_identity_embeddings_with_their_owners_figures(
    tiny_world: World, backbone: Backbone, tmp_path: Path
):
    settings = Settings(data_dir=tmp_path, world="tiny")
    rt = Runtime(settings, None, backbone, backbone.fingerprint(), WorldRetain(tiny_world), None)  # type: ignore[arg-type]
    module = _module(backbone, 3)
    tokens = backbone.tokens_of([tiny_world.image("p000", v) for v in tiny_world.heldout_views()] * 2)
    embeddings = backbone.identity_embeddings(tokens)
    # As artifacts store them now (embeddings), and as they were stored before (visual tokens): read alike.
    for name, stored in (("now", {"embeddings": embeddings}), ("before", {"tokens": tokens})):
        manifest = save_module(module, tmp_path / name, backbone.fingerprint(), tensors={PROBES: stored})
        _, probes = rt.gate_part(str(tmp_path / name), manifest["digest"])
        assert probes is not None and probes.own_margins is not None and probes.own_cosines is not None
        assert torch.allclose(probes.inputs, embeddings, atol=1e-6)
        threshold = torch.logit(module.discriminator.threshold, eps=1e-7)
        assert torch.allclose(probes.own_margins, module.discriminator.logits(embeddings) - threshold, atol=1e-5)
        assert torch.allclose(probes.own_cosines, embeddings @ module.discriminator.prototype, atol=1e-6)
