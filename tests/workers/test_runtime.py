"""What a worker keeps of the served set for verification: each module's gate, loaded once; an encoder only when
its gate fires, as the server loads them."""

from __future__ import annotations

from pathlib import Path

import torch

from core.settings import Settings
from unlearning.artifacts import save_module
from unlearning.backbones import Backbone
from unlearning.cagul import CagulConfig, CagulModule
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
