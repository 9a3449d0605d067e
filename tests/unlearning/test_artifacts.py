import hashlib
import json

import pytest
import torch

from unlearning.artifacts import (
    MANIFEST,
    WEIGHTS,
    artifact_digest,
    load_gate,
    load_module,
    load_rewrite,
    load_tensors,
    save_module,
    verify_artifact,
)
from unlearning.cagul import CagulConfig, CagulModule
from unlearning.cagul.module import ENCODER_DTYPE
from unlearning.errors import ArtifactIntegrityError, IncompatibleModuleError


@pytest.fixture()
def module():
    torch.manual_seed(0)
    m = CagulModule(CagulConfig(), 16, 32, identity_dim=8)
    torch.nn.init.normal_(m.encoder.fc2.weight)
    m.discriminator.threshold.fill_(0.9)
    return m


def _rewrite_manifest(directory, **changes):  # type: ignore[no-untyped-def]
    manifest = json.loads((directory / MANIFEST).read_text())
    (directory / MANIFEST).write_text(json.dumps({**manifest, **changes}, indent=1, sort_keys=True))


def test_round_trip_keeps_weights_threshold_and_config(module, tmp_path):
    manifest = save_module(module, tmp_path, "base-abc", {"request_id": "r1"})
    loaded = load_module(tmp_path, "base-abc", expected_digest=manifest["digest"])
    assert loaded.threshold == pytest.approx(0.9)
    assert loaded.config == module.config
    for (k, a), (_, b) in zip(module.state_dict().items(), loaded.state_dict().items(), strict=True):
        # Encoders are stored in bf16 and come back as the fp32 value nearest it; the rest exactly.
        expected = a.to(ENCODER_DTYPE).float() if k.startswith("encoder.") else a
        assert torch.equal(expected, b) and b.dtype == a.dtype, k
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk["method"] == "cagul" and on_disk["request_id"] == "r1" and "digest" not in on_disk
    assert {"torch", "transformers"} <= set(on_disk["library_versions"])
    assert on_disk["files"] == {WEIGHTS: hashlib.sha256((tmp_path / WEIGHTS).read_bytes()).hexdigest()}


def test_a_module_with_names_keeps_them_and_its_prefix_under_the_checksum(tmp_path):
    torch.manual_seed(0)
    named = CagulModule(CagulConfig(prefix_slots=4), 16, 32, identity_dim=8, aliases=("Poro Rodulu", "rodulu"))
    assert named.prefix is not None
    manifest = save_module(named, tmp_path, "base-abc")
    loaded = load_module(tmp_path, "base-abc", expected_digest=manifest["digest"])
    assert loaded.aliases == ("Poro Rodulu", "rodulu") and loaded.prefix is not None
    assert torch.equal(loaded.prefix.vectors, named.prefix.vectors)  # fp32, as trained
    part = load_gate(tmp_path, "base-abc", manifest["digest"])
    rewrite = load_rewrite(tmp_path, manifest["digest"])
    assert part.aliases == loaded.aliases and rewrite.prefix is not None
    assert torch.equal(rewrite.prefix.vectors, named.prefix.vectors)
    _rewrite_manifest(tmp_path, aliases=["someone else"])  # the names are covered by the registry's checksum
    with pytest.raises(ArtifactIntegrityError, match="checksum mismatch"):
        load_gate(tmp_path, "base-abc", manifest["digest"])
    unnamed = CagulModule(CagulConfig(), 16, 32, identity_dim=8)
    manifest = save_module(unnamed, tmp_path / "unnamed", "base-abc")
    assert load_rewrite(tmp_path / "unnamed", manifest["digest"]).prefix is None


def test_digest_is_the_manifest_bytes_which_cover_files_and_config(module, tmp_path):
    manifest = save_module(module, tmp_path, "base-abc")
    assert (
        manifest["digest"]
        == artifact_digest(tmp_path)
        == hashlib.sha256((tmp_path / MANIFEST).read_bytes()).hexdigest()
    )
    verify_artifact(tmp_path, expected_digest=manifest["digest"])
    # A config edit with the weights untouched still changes the checksum the registry holds.
    _rewrite_manifest(tmp_path, config={**manifest["config"], "token_share": 0.5})
    assert artifact_digest(tmp_path) != manifest["digest"]
    load_module(tmp_path, "base-abc")  # self-consistent, so only the registry's checksum can tell
    for check in (
        lambda: load_module(tmp_path, "base-abc", expected_digest=manifest["digest"]),
        lambda: verify_artifact(tmp_path, expected_digest=manifest["digest"]),
    ):
        with pytest.raises(ArtifactIntegrityError, match="differs from the registry's checksum"):
            check()


def test_extra_tensor_sets_round_trip_and_are_verified(module, tmp_path):
    stats = {"mean": torch.arange(6.0).reshape(2, 3), "count": torch.tensor([7])}
    manifest = save_module(module, tmp_path, "base-abc", tensors={"retain_stats": stats})
    assert set(manifest["files"]) == {WEIGHTS, "retain_stats.safetensors"}
    loaded = load_tensors(tmp_path, "retain_stats", expected_digest=manifest["digest"])
    assert loaded.keys() == stats.keys() and all(torch.equal(loaded[k], stats[k]) for k in stats)
    with pytest.raises(ArtifactIntegrityError, match=r"lists no other\.safetensors"):
        load_tensors(tmp_path, "other")
    with pytest.raises(ValueError, match="must match"):
        save_module(module, tmp_path / "bad", "base-abc", tensors={"../escape": stats})
    with pytest.raises(ValueError, match="reserved"):
        save_module(module, tmp_path / "bad", "base-abc", {"files": {}})

    data = bytearray((tmp_path / "retain_stats.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "retain_stats.safetensors").write_bytes(bytes(data))
    # Every listed file is checked, so the module itself is refused too.
    for check in (lambda: load_tensors(tmp_path, "retain_stats"), lambda: load_module(tmp_path, "base-abc")):
        with pytest.raises(ArtifactIntegrityError, match="checksum mismatch"):
            check()
    (tmp_path / "retain_stats.safetensors").unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        load_module(tmp_path, "base-abc")


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
    with pytest.raises(ArtifactIntegrityError, match="no module manifest"):
        artifact_digest(tmp_path)


def test_old_format_and_a_manifest_naming_outside_files_are_refused(module, tmp_path):
    manifest = save_module(module, tmp_path, "base-abc")
    _rewrite_manifest(tmp_path, format_version=1, sha256=manifest["files"][WEIGHTS], files=None)
    with pytest.raises(ArtifactIntegrityError, match=r"format 1 .* is not 2: .*retrain the module"):
        load_module(tmp_path, "base-abc")
    _rewrite_manifest(tmp_path, format_version=2, files={WEIGHTS: manifest["files"][WEIGHTS], "../x": "0" * 64})
    with pytest.raises(ArtifactIntegrityError, match="outside"):
        load_module(tmp_path, "base-abc")
