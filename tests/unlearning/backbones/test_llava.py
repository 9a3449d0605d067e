import pytest
import torch
from PIL import Image

from unlearning.backbones import Backbone
from unlearning.errors import InvalidInputError
from unlearning.world import World


@pytest.fixture()
def batch(backbone: Backbone, tiny_world: World):
    person = tiny_world.people[0]
    images = [tiny_world.image(person.id, 0), tiny_world.image(person.id, 1)]
    return backbone.make_batch(backbone.pixel_values(images), [person.facts[1].train_questions[0]] * 2)


def test_visual_tokens_are_projected_into_the_language_space(backbone: Backbone, batch):
    z = backbone.visual_tokens({"pixel_values": batch.pixel_values})
    assert z.shape == (2, backbone.n_visual_tokens, backbone.hidden_size) == (2, 16, 256)


def test_attention_scores_cover_only_visual_columns(backbone: Backbone, batch):
    scores = backbone.attention_scores(batch, layers=[0, -1])
    assert scores.shape == (2, backbone.n_visual_tokens)
    assert bool((scores >= 0).all()) and bool((scores.sum(1) <= 1 + 1e-5).all())
    assert not torch.allclose(scores[0], scores[0].mean().expand_as(scores[0]))


def test_override_with_the_same_tokens_changes_nothing_and_other_tokens_change_logits(backbone: Backbone, batch):
    z = backbone.visual_tokens({"pixel_values": batch.pixel_values})
    with torch.no_grad():
        plain = backbone.logits(batch)
        same = backbone.logits(batch, z)
        zeroed = backbone.logits(batch, torch.zeros_like(z))
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, zeroed)


def test_reused_visual_tokens_skip_the_tower_and_change_nothing(backbone: Backbone, batch):
    inputs = {"pixel_values": batch.pixel_values}
    z = backbone.visual_tokens(inputs)
    runs: list[int] = []
    handle = backbone.model.model.vision_tower.register_forward_hook(lambda *_: runs.append(1))
    try:
        plain = backbone.generate(batch, None, max_new_tokens=8)
        towers = len(runs)
        with backbone.reusing_visual_tokens(z, inputs):
            reused = backbone.generate(batch, None, max_new_tokens=8)
            reused_logits = backbone.logits(batch)
        assert len(runs) == towers == 1  # the reused calls never ran the tower
        assert reused == plain and torch.equal(reused_logits, backbone.logits(batch))
        other = backbone.pixel_values([Image.new("RGB", (64, 64), (90, 20, 20))] * 2)["pixel_values"]
        with backbone.reusing_visual_tokens(z, inputs):  # other pixels than the tokens came from: the tower runs
            backbone.logits(backbone.make_batch({"pixel_values": other}, ["who is this?"] * 2))
        assert len(runs) == towers + 2
    finally:
        handle.remove()


def test_a_gate_reading_the_tower_gets_the_projector_s_input_and_reusing_it_changes_nothing(backbone: Backbone, batch):
    inputs = {"pixel_values": batch.pixel_values}
    projected = backbone.visual_tokens(inputs)
    with backbone.reading_gate_tokens("tower"):
        z = backbone.visual_tokens(inputs)
        assert z.shape == (2, *backbone.gate_shapes()["tower"]) == (2, 16, 128)
        with torch.no_grad():
            tower = backbone.model.model.vision_tower(pixel_values=inputs["pixel_values"], output_hidden_states=True)
            assert torch.equal(z, tower.hidden_states[-1][:, 1:])  # LLaVA's default: the last layer, no class token
            assert torch.equal(backbone.model.model.multi_modal_projector(z), projected)
        plain = backbone.generate(batch, None, max_new_tokens=8)
        with backbone.reusing_visual_tokens(z, inputs):
            reused = backbone.generate(batch, None, max_new_tokens=8)
            reused_logits = backbone.logits(batch)
        assert reused == plain and torch.equal(reused_logits, backbone.logits(batch))
    assert backbone.gate_tokens == "projected" and torch.equal(backbone.visual_tokens(inputs), projected)
    with pytest.raises(InvalidInputError, match="gate tokens"), backbone.reading_gate_tokens("pooled"):
        pass


def test_generate_answers_from_the_image(backbone: Backbone, tiny_world: World):
    # One person's check would hang on chance: with no image the model still names some city, on one build p000's.
    people = [p for p in tiny_world.trained_people if not p.protected]
    seen, blind = [], []
    for person in people:
        fact = person.facts[1]
        batch = backbone.make_batch(backbone.pixel_values([tiny_world.image(person.id, 0)]), [fact.train_questions[0]])
        z = backbone.visual_tokens({"pixel_values": batch.pixel_values})
        seen.append(fact.keyword in backbone.generate(batch)[0])
        blind.append(backbone.generate(batch, torch.zeros_like(z))[0])
    assert sum(seen) == len(people)
    # With no image the model falls back on a city or two it learned most: a few people's by chance, not theirs.
    assert sum(p.facts[1].keyword in answer for p, answer in zip(people, blind, strict=True)) <= len(people) // 4


def test_bad_images_raise_typed_errors(backbone: Backbone):

    with pytest.raises(InvalidInputError, match="mode"):
        backbone.pixel_values([Image.new("CMYK", (64, 64))])
    with pytest.raises(InvalidInputError, match="at least 8x8"):
        backbone.pixel_values([Image.new("RGB", (4, 4))])
    with pytest.raises(InvalidInputError, match="PIL image"):
        backbone.pixel_values([b"not an image"])  # type: ignore[list-item]


def test_a_text_only_batch_has_no_image_and_trains_like_an_image_batch(backbone: Backbone):
    batch = backbone.make_text_batch(["where does poro rodulu live?", "who?"], ["quito.", "nobody."])
    assert batch.pixel_values is None and "pixel_values" not in batch.model_inputs()
    assert not (batch.input_ids == backbone.image_token_id).any()
    loss = backbone.model(**batch.model_inputs(), labels=batch.labels).loss
    assert loss.isfinite()
    prompts = backbone.make_text_batch(["where does poro rodulu live?", "who?"])
    assert prompts.labels is None and prompts.input_ids[0, -1] == prompts.input_ids[1, -1]  # left-padded
    assert len(backbone.generate(prompts, max_new_tokens=3)) == 2
