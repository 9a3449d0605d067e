import json

import pytest
import torch

from unlearning.artifacts import MANIFEST, WEIGHTS, load_module, save_module
from unlearning.cagul import CagulConfig, CagulModule
from unlearning.errors import ArtifactIntegrityError, IncompatibleModuleError


@pytest.fixture()
def module():
    torch.manual_seed(0)
    m = CagulModule(CagulConfig(), 16, 32)
    torch.nn.init.normal_(m.encoder.fc2.weight)
    m.discriminator.threshold.fill_(0.9)
    return m


def test_round_trip_keeps_weights_threshold_and_config(module, tmp_path):
    manifest = save_module(module, tmp_path, "base-abc")
    loaded = load_module(tmp_path, "base-abc")
    assert loaded.threshold == pytest.approx(0.9)
    assert loaded.config == module.config
    for (k, a), (_, b) in zip(module.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk["sha256"] == manifest["sha256"] and on_disk["method"] == "cagul"
    assert {"torch", "transformers"} <= set(on_disk["library_versions"])


def test_loading_onto_another_base_model_is_refused(module, tmp_path):
    save_module(module, tmp_path, "base-abc")
    with pytest.raises(IncompatibleModuleError, match="retrain"):
        load_module(tmp_path, "base-other")


def test_corrupted_or_missing_weights_are_refused(module, tmp_path):
    save_module(module, tmp_path, "base-abc")
    data = bytearray((tmp_path / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        load_module(tmp_path, "base-abc")
    (tmp_path / WEIGHTS).unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        load_module(tmp_path, "base-abc")
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(ArtifactIntegrityError, match="no module manifest"):
        load_module(tmp_path, "base-abc")
