"""Head kinds (ray_rm/model/heads.py): the registry, the scalar head's positions, and a new kind dropping in
(a 2-output head: built, run on a packed row and exported without touching the model, loop or export code)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ray_rm.config_schema import ModelConfig
from ray_rm.data.packer import pack_groups
from ray_rm.errors import UserError
from ray_rm.model.batch import collate_row
from ray_rm.model.build import build_reward_model, load_reward_model
from ray_rm.model.export import export_hf
from ray_rm.model.heads import HEADS, SCALAR, HeadKind, get_head, register_head
from test_model import random_groups


def test_unknown_head_lists_the_registered_ones():
    with pytest.raises(UserError, match="model.head 'orm' is unknown; choose one of scalar, attributes, prm"):
        get_head("orm")


def test_a_head_reading_a_field_the_packed_row_lacks_is_refused():
    with pytest.raises(ValueError, match="no_such_field"):
        register_head(dataclasses.replace(SCALAR, name="bad_test", targets=("no_such_field",)))
    assert "bad_test" not in HEADS


def test_scalar_head_reads_the_reward_token_or_the_first_token():
    batch = collate_row(next(iter(pack_groups(random_groups(3, seed=1), 400, True, 64))))
    assert torch.equal(SCALAR.positions(batch, False), batch.reward_index)
    assert torch.equal(SCALAR.positions(batch, True), batch.seq_start)
    assert SCALAR.answer([0.5, -1.0]) == {"rewards": [0.5, -1.0]}


@pytest.fixture
def two_output_head():
    kind = register_head(HeadKind(
        name="two_test", width=lambda model_cfg, hf_config: 2, positions=SCALAR.positions, output=lambda v: v,
        targets=("seq_scores",), losses=(), hf_class="AutoModelForSequenceClassification",
        config_entries=lambda width: {"num_labels": width}, answer=lambda values: {"pairs_of_values": values}))
    yield kind
    del HEADS["two_test"]


def test_a_new_head_kind_drops_in_through_build_forward_and_export(two_output_head, tiny_decoder_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, head="two_test"), seed=2).eval()
    row = next(iter(pack_groups(random_groups(4, seed=3), 400, True, 64)))
    batch = collate_row(row)
    with torch.no_grad():
        values = model(batch).rewards
        hidden = model._backbone_forward(batch)[batch.reward_index]
    assert values.shape == (batch.num_sequences, 2)
    assert torch.allclose(values, hidden.float() @ model.head.weight.float().T, atol=1e-6)

    out = export_hf(model, tiny_decoder_dir, tmp_path / "hf", {"chat_template": "auto", "max_length": 512})
    clf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert clf.config.num_labels == 2 and clf.config.ray_rm["head"] == "two_test"
    loaded = load_reward_model(str(out))
    with torch.no_grad():
        assert torch.allclose(loaded(batch).rewards, values, atol=1e-5)
