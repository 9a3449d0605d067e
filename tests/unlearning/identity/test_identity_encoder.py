"""The shared identity encoder: it places new photos of people it never saw next to their other photos, it is
stored with a digest that modules are bound to, and a damaged or mismatched file is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unlearning.backbones import Backbone, load_backbone
from unlearning.cagul import CagulConfig, CagulTrainer
from unlearning.errors import ArtifactIntegrityError, IncompatibleModuleError, InvalidInputError
from unlearning.identity import (
    IDENTITY_FILE,
    IdentityConfig,
    IdentityEncoder,
    identification_recall,
    load_identity_encoder,
    save_identity_encoder,
    train_identity_encoder,
)
from unlearning.world import World
from unlearning.world.identities import pretraining_portraits
from unlearning.world.requests import forget_data, world_retain_set


def test_new_photos_of_never_seen_people_land_next_to_their_other_photos(tiny_world: World, backbone: Backbone):
    # Drawn with another seed than pre-training used: people the encoder never saw, in photos it never saw.
    people = pretraining_portraits(tiny_world, 150, 4, seed=tiny_world.config.identity.seed + 1)
    tokens = backbone.visual_tokens(backbone.pixel_values([im for p in people for im in p]))
    learned = backbone.identity_embeddings(tokens).view(150, 4, -1)
    raw = F.normalize(F.layer_norm(tokens, tokens.shape[-1:]).flatten(1), dim=-1).view(150, 4, -1)
    recall = identification_recall(learned)
    assert recall["recall_at_5"] >= 0.9
    assert recall["recall_at_1"] > identification_recall(raw)["recall_at_1"] + 0.2


def test_the_world_s_held_out_photos_find_their_person(tiny_world: World, backbone: Backbone):
    views = tiny_world.config.n_views
    images = [tiny_world.image(p.id, v) for p in tiny_world.people for v in range(views)]
    embeddings = backbone.identity_embeddings(backbone.visual_tokens(backbone.pixel_values(images)))
    assert identification_recall(embeddings.view(len(tiny_world.people), views, -1), (3,))["recall_at_3"] >= 0.95


def test_fresh_views_train_an_encoder_that_finds_never_seen_people(tiny_world: World, backbone: Backbone):
    config = IdentityConfig(identities=64, views=4, width=128, dim=32, steps=40, batch_size=32, augmentation="fresh")
    portraits = pretraining_portraits(tiny_world, config.identities, config.views, seed=5)
    encoder = train_identity_encoder(backbone, portraits, config)
    people = pretraining_portraits(tiny_world, 60, 4, seed=6)
    tokens = backbone.visual_tokens(backbone.pixel_values([im for p in people for im in p]))
    raw = F.normalize(F.layer_norm(tokens, tokens.shape[-1:]).flatten(1), dim=-1).view(60, 4, -1)
    learned = identification_recall(encoder(tokens).view(60, 4, -1), (1,))["recall_at_1"]
    assert learned > identification_recall(raw, (1,))["recall_at_1"]
    with pytest.raises(InvalidInputError, match="augmentation"):
        IdentityConfig(augmentation="strong")
    assert "augmentation" not in IdentityConfig().to_dict() and config.to_dict()["augmentation"] == "fresh"


def test_modules_are_bound_to_the_encoder(tiny_world: World, backbone: Backbone):
    assert backbone.identity_digest is not None
    other = load_backbone(tiny_world.reference_model_dir)
    encoder = IdentityEncoder(backbone.n_visual_tokens, backbone.hidden_size, 8, 4)
    other.attach_identity(encoder, "another-encoder")
    assert other.fingerprint() != backbone.fingerprint()


def test_store_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    config = IdentityConfig(identities=2, views=2, width=8, dim=4, batch_size=2)
    encoder = IdentityEncoder(3, 5, 8, 4)
    digest = save_identity_encoder(encoder, config, tmp_path)
    loaded, loaded_digest = load_identity_encoder(tmp_path, {"projected": (3, 5)})  # type: ignore[misc]
    z = torch.randn(2, 3, 5)
    assert loaded_digest == digest and torch.equal(loaded(z), encoder(z)) and loaded.tokens == "projected"
    with pytest.raises(IncompatibleModuleError):
        load_identity_encoder(tmp_path, {"projected": (4, 5)})
    (tmp_path / IDENTITY_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ArtifactIntegrityError):
        load_identity_encoder(tmp_path, {"projected": (3, 5)})
    assert load_identity_encoder(tmp_path / "absent", {"projected": (3, 5)}) is None
    # An encoder of the tower's tokens: refused by a model that cannot give its gate those, loaded where it can.
    tower = tmp_path / "tower"
    tower.mkdir()
    save_identity_encoder(
        IdentityEncoder(3, 2, 8, 4, "tower"), IdentityConfig(**{**config.to_dict(), "tokens": "tower"}), tower
    )
    with pytest.raises(IncompatibleModuleError, match="tower"):
        load_identity_encoder(tower, {"projected": (3, 5)})
    loaded, _ = load_identity_encoder(tower, {"projected": (3, 5), "tower": (3, 2)})  # type: ignore[misc]
    assert loaded.tokens == "tower" and loaded(torch.randn(2, 3, 2)).shape == (2, 4)
    with pytest.raises(InvalidInputError, match="tokens"):
        IdentityConfig(tokens="pooled")
    assert "tokens" not in IdentityConfig().to_dict()


def test_an_encoder_of_the_tower_s_tokens_makes_the_gate_read_them(tiny_world: World, backbone: Backbone):
    config = IdentityConfig(identities=64, views=4, width=128, dim=32, steps=40, batch_size=32, tokens="tower")
    encoder = train_identity_encoder(backbone, pretraining_portraits(tiny_world, 64, 4, seed=5), config)
    assert backbone.gate_tokens == "projected"  # training leaves what the model's gate reads as it was
    inputs = backbone.pixel_values([tiny_world.image(p.id, 0) for p in tiny_world.people[:3]])
    projected = backbone.visual_tokens(inputs)
    backbone.attach_identity(encoder, "tower-encoder")
    z = backbone.visual_tokens(inputs)
    assert backbone.gate_tokens == "tower" and z.shape == (3, backbone.n_visual_tokens, 128) != projected.shape
    assert backbone.identity_embeddings(z).shape == (3, 32)
    # A token discriminator reads projected tokens: on this model a module must gate on identity embeddings.
    forget = forget_data(tiny_world, ["p000"])
    retain = world_retain_set(tiny_world, ["p000"])
    with pytest.raises(InvalidInputError, match="identity"):
        CagulTrainer(backbone, CagulConfig(discriminator_input="flatten")).train(forget, retain)


def test_an_encoder_from_the_tower_s_head_starts_from_its_weights(tiny_world: World, backbone: Backbone):
    n_tokens, hidden = backbone.gate_shapes()["tower"]
    head = IdentityEncoder(n_tokens, hidden, 16, 128, "tower").frozen()
    portraits = pretraining_portraits(tiny_world, 8, 2, seed=5)
    kept = IdentityConfig(identities=8, views=2, width=16, steps=0, batch_size=8, tokens="tower", init="tower_head")
    encoder = train_identity_encoder(backbone, portraits, kept, initial=head.state_dict())
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in head.state_dict().items())
    tuned = train_identity_encoder(
        backbone, portraits, IdentityConfig(**{**kept.to_dict(), "steps": 2}), None, head.state_dict()
    )
    assert not torch.equal(tuned.fc1.weight, head.fc1.weight)
    with pytest.raises(InvalidInputError, match="tower's head"):
        train_identity_encoder(backbone, portraits, kept)
    with pytest.raises(InvalidInputError, match="tower's head"):
        train_identity_encoder(
            backbone, portraits, IdentityConfig(identities=8, views=2, batch_size=8), None, head.state_dict()
        )
