"""Every loss against a value computed by hand (plain Python math on the same numbers)."""
import math

import pytest
import torch

from ray_rm.data.packer import TokenizedGroup, append_group
from ray_rm.packed import PackedRow
from ray_rm.losses import LOSSES, LossSettings, compute_loss, log_barrier
from ray_rm.model.batch import collate_row
from ray_rm.model.reward_model import RewardOutput

NAN = math.nan


def sig(x):
    return 1 / (1 + math.exp(-x))


def row_of(groups, share_prompt=False):
    row = PackedRow()
    for g in groups:
        append_group(row, g, share_prompt)
    return row


def pair(eid, chosen, rejected, margin=NAN, scores=(NAN, NAN), common=0):
    return TokenizedGroup(eid, [chosen, rejected], [0, 1], common, margin, list(scores))


@pytest.fixture
def two_pairs():
    # pair a: rewards (1.5, 0.5), margin 2; pair b: rewards (-0.25, 0.75), no margin
    row = row_of([pair("a", [1, 2, 3], [1, 2, 4, 5], margin=2.0, scores=(3.0, 1.0), common=2),
                  pair("b", [6, 7], [8], scores=(NAN, NAN))])
    return collate_row(row), torch.tensor([1.5, 0.5, -0.25, 0.75])


def run(name, batch, rewards, token_values=None, **kw):
    res = compute_loss(RewardOutput(rewards, token_values), batch, LossSettings(name=name, **kw))
    return {t: float(v) for t, (v, _) in res.terms.items()}, res


def test_registry_lists_every_loss():
    assert set(LOSSES) == {"bt", "logexp", "margin", "internlm2", "token_divergence", "ce2", "mse", "listwise",
                           "attribute_mse", "attribute_mse_bt", "step_bce"}


def test_a_registered_loss_is_picked_up_by_name_and_unknown_names_list_the_choices(two_pairs):
    from ray_rm.errors import UserError
    from ray_rm.losses import loss_terms, register_loss

    @register_loss("hinge_test", (("hinge", "pairs"),))
    def hinge(out, batch, settings):
        return {"hinge": (1 - (out.rewards[batch.pair_better] - out.rewards[batch.pair_worse])).clamp(min=0).sum()}

    try:
        batch, r = two_pairs  # pair diffs 1.0 and -1.0: hinge terms 0 and 2
        terms, res = run("hinge_test", batch, r)
        assert terms == {"hinge": 2.0} and loss_terms(LossSettings("hinge_test")) == (("hinge", "pairs"),)
    finally:
        del LOSSES["hinge_test"]
    with pytest.raises(UserError, match="hinge_test' is unknown; choose one of bt, logexp"):
        run("hinge_test", batch, r)


def test_bt_and_logexp(two_pairs):
    batch, r = two_pairs
    expected = -math.log(sig(1.0)) - math.log(sig(-1.0))
    terms, res = run("bt", batch, r)
    assert terms["bt"] == pytest.approx(expected, rel=1e-6)
    assert res.counts["pairs"] == 2
    terms, _ = run("logexp", batch, r)
    assert terms["logexp"] == pytest.approx(math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.0)), rel=1e-6)


def test_margin_uses_row_margin_and_zero_when_absent(two_pairs):
    batch, r = two_pairs
    terms, _ = run("margin", batch, r)
    assert terms["margin"] == pytest.approx(-math.log(sig(1.0 - 2.0)) - math.log(sig(-1.0)), rel=1e-6)


def test_center_rewards_term(two_pairs):
    batch, r = two_pairs
    terms, _ = run("bt", batch, r, center_rewards_coefficient=0.01)
    assert terms["center"] == pytest.approx(0.01 * ((1.5 + 0.5) ** 2 + (-0.25 + 0.75) ** 2), rel=1e-6)


def test_internlm2_ranking_focal_and_barrier(two_pairs):
    batch, r = two_pairs
    barrier = sum(-math.log(5 - x) - math.log(5 + x) + 2 * math.log(5) for x in (1.5, 0.5, -0.25, 0.75))
    terms, res = run("internlm2", batch, r)
    assert terms["ranking"] == pytest.approx(-math.log(sig(1.0)) - math.log(sig(-1.0)), rel=1e-6)
    assert terms["barrier"] == pytest.approx(0.01 * barrier, rel=1e-5)
    assert res.terms["barrier"][1] == "sequences"
    terms, _ = run("internlm2", batch, r, focal_gamma=2.0)
    focal = sum(-((1 - sig(d)) ** 2) * math.log(sig(d)) for d in (1.0, -1.0))
    assert terms["ranking"] == pytest.approx(focal, rel=1e-6)


def test_log_barrier_is_finite_and_pushes_back_outside_bounds():
    r = torch.tensor([-7.0, -5.0, 0.0, 4.999, 9.0], requires_grad=True)
    v = log_barrier(r)
    assert torch.isfinite(v).all() and v[2].item() == pytest.approx(0.0, abs=1e-7)
    v.sum().backward()
    assert r.grad[0] < 0 and r.grad[-1] > 0  # keeps pulling back towards (-5, 5)


def test_ce2_is_two_class_cross_entropy(two_pairs):
    batch, r = two_pairs
    terms, res = run("ce2", batch, r)
    expected = -math.log(sig(1.5)) - math.log(sig(-0.5)) - math.log(sig(-0.25)) - math.log(sig(-0.75))
    assert terms["ce2"] == pytest.approx(expected, rel=1e-6)
    # the same value as softmax cross-entropy over logits (0, r) with label accept/reject
    logits = torch.stack([torch.zeros(4), r], dim=1)
    labels = torch.tensor([1, 0, 1, 0])
    assert terms["ce2"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum")),
                                         rel=1e-6)
    assert res.counts["sequences"] == 4


def test_mse_only_on_scored_sequences(two_pairs):
    batch, r = two_pairs
    terms, res = run("mse", batch, r)
    assert terms["mse"] == pytest.approx((1.5 - 3.0) ** 2 + (0.5 - 1.0) ** 2, rel=1e-6)
    assert res.counts["scored"] == 2


def test_listwise_plackett_luce():
    g = TokenizedGroup("k", [[1, 2], [1, 3], [1, 4]], [0, 1, 2], 1, NAN, [NAN] * 3)
    batch = collate_row(row_of([g]))
    r = torch.tensor([2.0, 1.0, -1.0])
    terms, res = run("listwise", batch, r)
    p1 = math.exp(2) / (math.exp(2) + math.exp(1) + math.exp(-1))
    p2 = math.exp(1) / (math.exp(1) + math.exp(-1))
    assert terms["listwise"] == pytest.approx(-math.log(p1) - math.log(p2), rel=1e-6)
    assert res.counts["groups"] == 1
    # pairwise losses see all 3 ordered pairs of the ranking
    assert res.counts["pairs"] == 3


def test_ties_form_no_pair():
    g = TokenizedGroup("t", [[1, 2], [1, 3], [1, 4]], [0, 0, 1], 1, NAN, [2.0, 2.0, 1.0])
    batch = collate_row(row_of([g]))
    assert sorted(zip(batch.pair_better.tolist(), batch.pair_worse.tolist())) == [(0, 2), (1, 2)]
    assert batch.pair_margin.tolist() == [1.0, 1.0]  # k-way margins come from score differences


@pytest.mark.parametrize("share_prompt", [False, True])
def test_token_divergence_after_first_differing_token(share_prompt):
    # common prefix [1, 2]; chosen [1, 2, 3, 4, 5], rejected [1, 2, 6, 7]: aligned tokens at offsets 2 and 3
    g = pair("d", [1, 2, 3, 4, 5], [1, 2, 6, 7], common=2)
    batch = collate_row(row_of([g], share_prompt))
    values = torch.arange(batch.input_ids.shape[1], dtype=torch.float32) * 0.1
    own_c, own_r = int(batch.own_start[0]), int(batch.own_start[1])
    assert batch.input_ids[0, own_c].item() == 3 and batch.input_ids[0, own_r].item() == 6
    diffs = [values[own_c + t] - values[own_r + t] for t in range(2)]
    expected = sum(-math.log(sig(float(d))) for d in diffs) / 2
    terms, _ = run("token_divergence", batch, torch.tensor([0.0, 0.0]), token_values=values)
    assert terms["token_divergence"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_never_read_device_values_on_the_host(name):
    """On the meta device every value read (.tolist(), float(), bool(), mask indexing) raises: a loss that
    runs there never waits for the GPU. Index data is built on the CPU by collate_row instead."""
    g3 = TokenizedGroup("k", [[1, 2, 3], [1, 2, 4, 5], [1, 6]], [0, 1, 2], 1, NAN, [3.0, 1.0, 0.5],
                        step_ends=[[1, 2], [3], [1]], step_labels=[[1.0, NAN], [0.0], [1.0]])
    batch = collate_row(row_of([pair("a", [1, 2, 3], [1, 2, 4, 5], margin=2.0, common=2), g3], True)).to("meta")
    outputs = batch.step_index.numel() if name == "step_bce" else batch.num_sequences  # the prm head: per step
    rewards = torch.zeros(outputs, device="meta", requires_grad=True)
    values = torch.zeros(batch.input_ids.shape[1], device="meta")
    res = compute_loss(RewardOutput(rewards, values), batch, LossSettings(name=name, center_rewards_coefficient=0.01))
    assert all(v.device.type == "meta" for v, _ in res.terms.values())
    assert res.counts["pairs"] == 4 and all(s.device.type == "meta" for s in res.stats.values())
