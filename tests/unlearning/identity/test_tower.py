"""Contrastive pre-training of a vision tower: it separates people it never saw better than before, and a world
built without it keeps its fingerprint."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from unlearning.errors import InvalidInputError
from unlearning.identity import identification_recall
from unlearning.identity.config import IdentityConfig, TowerConfig
from unlearning.identity.tower import pretrain_vision_tower
from unlearning.identity.trainer import hard_batch, nearest_people
from unlearning.world import WORLD_PRESETS
from unlearning.world.config import WorldConfig
from unlearning.world.people import with_geometry
from unlearning.world.portraits import render_portrait
from unlearning.world.vocabulary import ATTRIBUTES

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _photos(people: int, views: int, seed: int) -> np.ndarray:
    rng = random.Random(seed)
    identities = [with_geometry(rng, tuple(rng.randrange(s) for s in ATTRIBUTES.values()), True) for _ in range(people)]
    return np.stack(
        [
            np.stack([np.asarray(render_portrait(i, rng.randrange(1 << 30), 32)) for _ in range(views)])
            for i in identities
        ]
    )


def _pixels(photos: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(photos.reshape(-1, *photos.shape[2:])).permute(0, 3, 1, 2).float().div(255)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@torch.no_grad()
def _recall_at_1(tower: CLIPVisionModel, photos: np.ndarray) -> float:
    h = tower(pixel_values=_pixels(photos)).last_hidden_state[:, 1:]
    features = F.normalize(F.layer_norm(h, h.shape[-1:]).flatten(1), dim=-1)
    return identification_recall(features.view(*photos.shape[:2], -1), (1,))["recall_at_1"]


@pytest.mark.parametrize("hard_group", [0, 4], ids=["random-batches", "look-alikes-together"])
def test_pre_trained_tower_tells_apart_people_it_never_saw(hard_group: int):
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    tower = CLIPVisionModel(config)
    fresh = _photos(60, 4, seed=1)  # people pre-training never draws
    before = _recall_at_1(tower, fresh)
    tower_config = TowerConfig(
        identities=120, views=4, steps=80, batch_size=48, width=64, lr=3e-3, hard_group=hard_group, hard_refresh=20
    )
    report, head = pretrain_vision_tower(tower, _photos(120, 4, seed=0), MEAN, STD, tower_config)
    after = _recall_at_1(tower, fresh)
    assert report["final_loss"] < 3.0
    assert after > before + 0.15, (before, after)
    # The head it trained through is kept: an identity encoder on the tower's tokens, frozen as served.
    assert head.tokens == "tower" and not any(p.requires_grad for p in head.parameters())
    with torch.no_grad():
        by_head = head(tower(pixel_values=_pixels(fresh)).last_hidden_state[:, 1:]).view(*fresh.shape[:2], -1)
    assert identification_recall(by_head, (1,))["recall_at_1"] > before + 0.15


def test_hard_batches_draw_look_alikes_together():
    generator = torch.Generator().manual_seed(0)
    # 50 families of 4 people each, nearer each other than to anyone else.
    centres = F.normalize(torch.randn(50, 16, generator=generator), dim=-1)
    family = torch.arange(200) // 4
    people = F.normalize(centres[family] + 0.1 * torch.randn(200, 16, generator=generator), dim=-1)
    neighbours = nearest_people(people, 8, chunk=64)
    cosine = (people @ people.T).fill_diagonal_(float("-inf"))
    assert torch.equal(neighbours, cosine.topk(8, dim=1).indices)
    batch = hard_batch(neighbours, 64, 4, generator)
    assert len(batch) == 64 and len(set(batch.tolist())) == 64
    # Families share the batch: all but the last group's members find a relative in it, where 64 people at random
    # leave about a third alone (each of the 3 relatives is drawn with chance about 0.32).
    assert sum((family[batch] == family[p]).sum() > 1 for p in batch) >= 60
    at_random = torch.randperm(200, generator=generator)[:64]
    assert sum((family[at_random] == family[p]).sum() > 1 for p in at_random) < 52


def test_tower_config_is_checked_and_off_by_default():
    with pytest.raises(InvalidInputError, match="views"):
        TowerConfig(identities=10, views=1)
    with pytest.raises(InvalidInputError, match="batch_size"):
        TowerConfig(identities=10, batch_size=11)
    with pytest.raises(InvalidInputError, match="margin"):
        TowerConfig(identities=10, margin=1.0)
    with pytest.raises(InvalidInputError, match="hard_group"):
        TowerConfig(identities=10, hard_group=1)
    # A margin added later leaves the towers pre-trained without one (the default world's) their fingerprint.
    assert not {"margin", "hard_group", "hard_refresh"} & set(WORLD_PRESETS["default"].to_dict()["tower"])
    assert TowerConfig(identities=1000, margin=0.2).to_dict()["margin"] == 0.2
    # Worlds built before the tower existed keep their fingerprint; a world that pre-trains its tower does not.
    assert "tower" not in WorldConfig().to_dict()
    assert WORLD_PRESETS["scale"].tower.identities > 0 and WORLD_PRESETS["default"].tower.identities > 0
    assert WorldConfig.from_dict(WORLD_PRESETS["scale"].to_dict()) == WORLD_PRESETS["scale"]


def test_identity_from_the_tower_head_is_checked():
    with pytest.raises(InvalidInputError, match="steps"):
        IdentityConfig(steps=0)
    with pytest.raises(InvalidInputError, match="tower's tokens"):
        IdentityConfig(init="tower_head")
    head_identity = IdentityConfig(steps=0, tokens="tower", init="tower_head")
    with pytest.raises(InvalidInputError, match="pre-trained tower"):
        WorldConfig(identity=head_identity)
    with pytest.raises(InvalidInputError, match="as wide"):
        WorldConfig(identity=head_identity, tower=TowerConfig(identities=1000, width=256))
    # Added later: encoders trained from fresh weights (the tiny and default worlds') keep their fingerprint.
    assert "init" not in IdentityConfig().to_dict() and head_identity.to_dict()["init"] == "tower_head"
