import pytest
import torch

from unlearning.cagul import CagulConfig, Discriminator, StackedDiscriminators, TokenEncoder, select_tokens
from unlearning.cagul.config import WIDER_PROBES
from unlearning.cagul.selection import apply_encoder
from unlearning.cagul.trainer import nearest
from unlearning.errors import InvalidInputError


@pytest.mark.parametrize("kind", ["flatten", "attention_pool", "mean_pool", "identity"])
def test_stacked_discriminators_equal_each_one_alone(kind):
    torch.manual_seed(0)
    discs = [Discriminator(16, 32, 8, kind, identity_dim=12) for _ in range(5)]
    for d in discs:
        if d.pool_query is not None:
            torch.nn.init.normal_(d.pool_query)
    # An identity discriminator reads the shared identity embedding, not the tokens.
    z = torch.randn(7, 12) if kind == "identity" else torch.randn(7, 16, 32)
    stacked = StackedDiscriminators(discs)(z)
    single = torch.stack([d(z) for d in discs]).detach()
    assert stacked.shape == (5, 7)
    assert torch.allclose(stacked, single, atol=1e-6)


@pytest.mark.parametrize("kind", ["flatten", "identity"])
def test_stacked_rows_added_and_removed_one_at_a_time_equal_each_one_alone(kind):
    torch.manual_seed(0)
    discs = [Discriminator(16, 32, 8, kind, identity_dim=12) for _ in range(6)]
    z = torch.randn(7, 12) if kind == "identity" else torch.randn(7, 16, 32)
    stacked = StackedDiscriminators(discs[:1])
    rows = [0]
    for i in range(1, 6):  # grows past its first capacity
        stacked.add(discs[i])
        rows.append(i)
    for gone in (2, 0):  # the last row takes the removed row's place
        row = rows.index(gone)
        stacked.remove(row)
        rows[row] = rows[-1]
        rows.pop()
    assert len(stacked) == 4 and sorted(rows) == [1, 3, 4, 5]
    single = torch.stack([discs[i](z) for i in rows]).detach()
    assert torch.allclose(stacked(z), single, atol=1e-6)
    assert torch.equal(stacked.thresholds, torch.stack([discs[i].threshold for i in rows]))


def test_encoder_starts_as_the_identity():
    enc = TokenEncoder(32, 64, n_tokens=16)
    z = torch.randn(3, 16, 32)
    assert torch.equal(enc(z), z)


def test_selection_rules_pick_k_lowest_highest_random_or_all():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9], [0.4, 0.3, 0.2, 0.1]])
    low = select_tokens(scores, 4, "lowest", 0.5, 2)
    assert low.tolist() == [[True, False, True, False], [False, False, True, True]]
    high = select_tokens(scores, 4, "highest", 0.25, 2)
    assert high.tolist() == [[False, False, False, True], [True, False, False, False]]
    rand = select_tokens(None, 4, "random", 0.5, 2, torch.Generator().manual_seed(0))
    assert rand.sum(1).tolist() == [2, 2]
    assert bool(select_tokens(None, 4, "all", 1.0, 2).all())
    with pytest.raises(ValueError):
        select_tokens(None, 4, "lowest", 0.5, 2)


def test_selection_per_row_counts_never_picks_padding():
    # Two images of 4 and 2 visual tokens, the second padded with zero scores (as `attention_scores` pads it).
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9], [0.4, 0.3, 0.0, 0.0]])
    counts = torch.tensor([4, 2])
    assert select_tokens(scores, counts, "lowest", 0.5, 2).tolist() == [
        [True, False, True, False],
        [False, True, False, False],
    ]
    assert select_tokens(None, counts, "all", 1.0, 2).tolist() == [[True] * 4, [True, True, False, False]]
    rand = select_tokens(None, counts, "random", 0.5, 2, torch.Generator().manual_seed(0))
    assert rand.sum(1).tolist() == [2, 1] and not bool(rand[1, 2:].any())


def test_encoder_only_rewrites_selected_tokens():
    enc = TokenEncoder(8, 16)
    torch.nn.init.normal_(enc.fc2.weight)
    z = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, False, False, False], [False, False, False, True]])
    out = apply_encoder(enc, z, mask)
    assert torch.equal(out[~mask], z[~mask])
    assert not torch.allclose(out[mask], z[mask])


def test_config_round_trips_and_rejects_bad_values():
    cfg = CagulConfig(token_rule="lowest", token_share=0.25, attention_layers=(0, 2))
    assert CagulConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InvalidInputError, match="token_rule"):
        CagulConfig(token_rule="middle")
    with pytest.raises(InvalidInputError, match="unknown CAGUL parameters"):
        CagulConfig.from_dict({"stepz": 3})
    with pytest.raises(InvalidInputError, match="token_share"):
        CagulConfig(token_share=0)


def test_stage_two_scores_only_the_candidates_stage_one_picks():
    torch.manual_seed(0)
    discs = [Discriminator(16, 32, 8, "identity", identity_dim=12) for _ in range(6)]
    for d in discs:
        d.prototype.copy_(torch.nn.functional.normalize(torch.randn(12), dim=0))
    stacked = StackedDiscriminators(discs)
    e = torch.nn.functional.normalize(torch.randn(5, 12), dim=1)
    selected = stacked.candidates(e, 2)
    nearest = (e @ stacked.prototypes.T).argsort(dim=1, descending=True)[:, :2]
    assert torch.equal(selected.sort(1).values, nearest.sort(1).values)
    assert torch.allclose(stacked.forward_selected(e, selected), stacked(e).T.gather(1, selected), atol=1e-6)


def test_a_retry_remedies_the_criterion_that_failed():
    base = CagulConfig()
    misses = base.strengthened(["leak", "gate_tpr"])
    assert misses.positive_augmentations > base.positive_augmentations and misses.steps == base.steps
    assert misses.threshold_floor < base.threshold_floor and misses.hard_negatives == 0
    false_fires = base.strengthened(["retain_identical"])
    assert false_fires.threshold_floor > base.threshold_floor and false_fires.target_fpr < base.target_fpr
    assert false_fires.negative_augmentations > base.negative_augmentations
    assert false_fires.hard_negatives > base.hard_negatives
    assert false_fires.positive_augmentations == base.positive_augmentations and false_fires.steps == base.steps
    leaks = base.strengthened(["leak"])
    assert leaks.steps > base.steps and set(WIDER_PROBES) <= set(leaks.probe_questions)
    assert leaks.discriminator_steps == base.discriminator_steps
    # Remedies accumulate over attempts, and every attempt draws a new seed.
    twice = false_fires.strengthened(["retain_identical"])
    assert twice.threshold_floor > false_fires.threshold_floor and twice.seed == base.seed + 2


def test_hard_negatives_are_the_ones_nearest_the_subject():
    prototype = torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 0.0]), dim=0)
    embeddings = torch.nn.functional.normalize(
        torch.tensor([[0.0, 1.0, 0.0], [0.9, 0.1, 0.0], [-1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.99, 0.0, 0.1]]), dim=1
    )
    assert nearest(embeddings, prototype, 2) == [4, 1]
    assert sorted(nearest(embeddings, prototype, 10)) == [0, 1, 2, 3, 4]
