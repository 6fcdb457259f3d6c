"""The attribute head (model.head=attributes): rated rows packed with their ratings, the masked MSE (+ BT on the
combined reward) against hand-computed values, packed == unpacked, and the export read by plain transformers."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ray_rm.config_schema import DataConfig, ModelConfig
from ray_rm.data.pipeline import PackSettings, direct_packed_rows
from ray_rm.data.packer import pack_groups
from ray_rm.data.rated_groups import attribute_names
from ray_rm.errors import DataError, UserError
from ray_rm.losses import LossSettings, compute_loss, unit_counts
from ray_rm.model.batch import collate_row
from ray_rm.model.build import build_reward_model, load_reward_model
from ray_rm.model.export import export_hf

NAMES = ("helpfulness", "correctness", "verbosity")
ROWS = [
    {"prompt": "What is 2 + 2?", "response": "4.", "helpfulness": 4, "correctness": 4, "verbosity": 0},
    {"prompt": "Name a colour.", "response": "Blue, the colour of a calm sea.",
     "scores": {"helpfulness": 3, "correctness": 4, "verbosity": 2}},
    {"prompt": "What is 3 + 3?", "response": "5, I think.", "correctness": 0, "verbosity": 1},  # no helpfulness
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
    {"prompt": "Capital of France?", "response": "Paris.", "scores": {"helpfulness": 4, "verbosity": None}},
]


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def packed(files, tokenizer_dir, names=NAMES, on_error="raise", pack_tokens=512, **kw):
    data = DataConfig(train_files=files, on_error=on_error, pack_tokens=pack_tokens, max_length=200, **kw)
    return direct_packed_rows(files, data, PackSettings(tokenizer_dir, share_prompt=True, attributes=tuple(names)))


def attr_model(tiny_decoder_dir, **kw):
    cfg = ModelConfig(name_or_path=tiny_decoder_dir, head="attributes", attributes=list(NAMES),
                      attn_implementation="sdpa", **kw)
    return build_reward_model(cfg, seed=3).eval()


# ---------------------------------------------------------------------------------------------- data
def test_rated_rows_and_pairs_pack_with_their_ratings(tmp_path, tiny_decoder_dir):
    rows, report = packed([write_rows(tmp_path / "mixed.jsonl", ROWS)], tiny_decoder_dir)
    assert report.rows_read == 5 and report.rows_kept == 5
    (row,) = rows
    nan = math.nan
    by_id = {}
    seq = 0
    for gid, size in zip(row.group_ids, row.group_sizes):
        by_id[gid] = [row.seq_attributes[(seq + j) * 3:(seq + j + 1) * 3] for j in range(size)]
        seq += size
    f = str(tmp_path / "mixed.jsonl")
    assert by_id[f"{f}:1"] == [[4.0, 4.0, 0.0]]  # HelpSteer-style flat columns
    assert by_id[f"{f}:2"] == [[3.0, 4.0, 2.0]]  # nested scores
    assert [math.isnan(v) for v in by_id[f"{f}:3"][0]] == [True, False, False]  # missing: NaN (masked), not 0
    assert [math.isnan(v) for v in by_id[f"{f}:5"][0]] == [False, True, True]  # null and absent: NaN
    assert len(by_id[f"{f}:4"]) == 2 and all(math.isnan(v) for s in by_id[f"{f}:4"] for v in s)  # a pair: no ratings
    assert len(row.seq_attributes) == 3 * len(row.reward_index)


@pytest.mark.parametrize("bad, field, message", [
    ({"prompt": "Q", "response": "A", "helpfulness": "4"}, "helpfulness", "number"),
    ({"prompt": "Q", "response": "A", "helpfulness": 1, "tone": 3}, "tone", "is not one of the attributes"),
    ({"prompt": "Q", "response": "A", "note": "unrated"}, "helpfulness", "rates none of the attributes"),
    ({"prompt": "Q", "response": "A", "scores": [1, 2]}, "scores", "expected an object"),
    ({"prompt": "Q", "completions": ["a"], "labels": [True]}, "", "stepwise"),
    ({"response": "A", "helpfulness": 1}, "prompt", "missing"),
])
def test_bad_rated_rows_raise_naming_file_row_and_field_or_are_counted(tmp_path, tiny_decoder_dir, bad, field,
                                                                       message):
    f = write_rows(tmp_path / "bad.jsonl", [ROWS[0], bad])
    with pytest.raises(DataError, match=message) as err:
        packed([f], tiny_decoder_dir)
    assert err.value.source == f and err.value.row == 2 and err.value.field == field
    rows, report = packed([f], tiny_decoder_dir, on_error="drop")
    assert report.rows_read == 2 and report.rows_kept == 1
    assert sum(n for reason, n in report.to_dict()["dropped"].items() if reason.startswith("invalid")) == 1


def test_attribute_names_come_from_the_config_or_the_first_rated_row(tmp_path):
    f = write_rows(tmp_path / "r.jsonl", [ROWS[3], ROWS[1]])
    assert attribute_names(["x"], [f], DataConfig()) == ("x",)
    assert attribute_names([], [f], DataConfig()) == NAMES  # the pair in row 1 is passed over
    assert attribute_names([], ["builtin:attributes-mixed"], DataConfig()) == NAMES
    with pytest.raises(DataError, match="no rated row"):
        attribute_names([], [write_rows(tmp_path / "p.jsonl", [ROWS[3]])], DataConfig())


# ---------------------------------------------------------------------------------------------- loss
def test_masked_loss_equals_the_hand_computed_value(tmp_path, tiny_decoder_dir):
    model = attr_model(tiny_decoder_dir, attribute_weights=[0.5, 0.3, -0.2], attribute_stds=[2, 2, 1])
    model.combiner.means = torch.tensor([2.0, 2.0, 1.0])  # (a bias-free decoder head refuses means to export)
    (row,) = packed([write_rows(tmp_path / "m.jsonl", ROWS)], tiny_decoder_dir)[0]
    batch = collate_row(row)
    with torch.no_grad():
        out = model(batch)
        z = model.head(model._backbone_forward(batch)[batch.reward_index]).float()
    attrs = out.attributes.tolist()
    means, stds, weights = [2, 2, 1], [2, 2, 1], [0.5, 0.3, -0.2]
    targets = batch.seq_attributes.tolist()
    sse, given = 0.0, 0
    for n, (a, y) in enumerate(zip(attrs, targets)):
        for j in range(3):
            assert a[j] == pytest.approx(means[j] + stds[j] * float(z[n, j]), abs=1e-5)
            if not math.isnan(y[j]):
                sse += ((a[j] - y[j]) / stds[j]) ** 2
                given += 1
        assert float(out.rewards[n]) == pytest.approx(sum(w * v for w, v in zip(weights, a)), abs=1e-5)
    res = compute_loss(out, batch, LossSettings("attribute_mse_bt"))
    assert float(res.terms["attribute_mse"][0]) == pytest.approx(sse, rel=1e-5)
    assert res.terms["attribute_mse"][1] == "ratings" and unit_counts(batch)["ratings"] == given == 9
    (better, worse), = [(b, w) for b, w in zip(batch.pair_better.tolist(), batch.pair_worse.tolist())]
    bt = math.log1p(math.exp(-(float(out.rewards[better]) - float(out.rewards[worse]))))
    assert float(res.terms["bt"][0]) == pytest.approx(bt, rel=1e-5)
    zeroed = batch.seq_attributes.nan_to_num(0.0)  # reading a missing rating as 0 would change the loss
    assert float(((out.attributes - zeroed) / out.attribute_stds).square().sum()) != pytest.approx(sse, rel=1e-3)


def test_packed_equals_unpacked(tmp_path, tiny_decoder_dir):
    model = attr_model(tiny_decoder_dir)
    from ray_rm.data.prepare import make_encoder, process_task
    from ray_rm.data.sources import plan_read_tasks

    f = write_rows(tmp_path / "m.jsonl", ROWS)
    data = DataConfig(max_length=200, pack_tokens=512, on_error="raise")
    (task,) = plan_read_tasks([f])
    groups, _ = process_task(task, make_encoder(tiny_decoder_dir, data), data, True, attributes=NAMES)
    (whole,) = pack_groups(groups, 512, share_prompt=True)
    singles = [row for g in groups for row in pack_groups([g], 512, share_prompt=False)]  # alone, prompt repeated
    assert len(singles) == 5
    settings = LossSettings("attribute_mse_bt")

    def run(rows):
        attrs, sums = {}, {"attribute_mse": 0.0, "bt": 0.0}
        for row in rows:
            batch = collate_row(row)
            with torch.no_grad():
                out = model(batch)
            res = compute_loss(out, batch, settings)
            for term in sums:
                sums[term] += float(res.terms[term][0])
            seq = 0
            for gid, size in zip(row.group_ids, row.group_sizes):
                attrs[gid] = out.attributes[seq:seq + size]
                seq += size
        return attrs, sums

    (a1, s1), (a2, s2) = run([whole]), run(singles)
    assert a1.keys() == a2.keys()
    for gid in a1:
        assert torch.allclose(a1[gid], a2[gid], atol=1e-5), gid
    assert s1 == pytest.approx(s2, rel=1e-5)


def test_rows_without_ratings_give_a_zero_attribute_loss(tiny_decoder_dir):
    from ray_rm.packed import PackedRow

    model = attr_model(tiny_decoder_dir)
    batch = collate_row(PackedRow.empty())
    out = model(batch)
    res = compute_loss(out, batch, LossSettings("attribute_mse"))
    assert float(res.terms["attribute_mse"][0]) == 0.0 and unit_counts(batch)["ratings"] == 0


def test_attribute_settings_must_match_the_names(tiny_decoder_dir):
    with pytest.raises(UserError, match="attribute_weights has 2 values"):
        attr_model(tiny_decoder_dir, attribute_weights=[1, 2])
    with pytest.raises(UserError, match="needs a head with a bias"):
        attr_model(tiny_decoder_dir, attribute_means=[2, 2, 1])
    with pytest.raises(UserError, match="needs attribute names"):
        build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, head="attributes"))


# ---------------------------------------------------------------------------------------------- export
def test_export_gives_plain_transformers_the_attribute_values(tmp_path, tiny_decoder_dir):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model = attr_model(tiny_decoder_dir, attribute_weights=[1.0, 0.5, -0.25], attribute_stds=[2, 2, 1])
    (row,), _ = packed([write_rows(tmp_path / "m.jsonl", ROWS)], tiny_decoder_dir)
    batch = collate_row(row)
    with torch.no_grad():
        trained = model(batch)
    path = export_hf(model, tiny_decoder_dir, tmp_path / "hf", {"chat_template": "auto", "max_length": 200})
    config = AutoConfig.from_pretrained(path)
    assert config.num_labels == 3 and config.id2label == dict(enumerate(NAMES))
    assert config.ray_rm["attributes"] == list(NAMES) and config.ray_rm["attribute_weights"] == [1.0, 0.5, -0.25]
    assert config.ray_rm["attribute_normalization"]["stds"] == [2.0, 2.0, 1.0]
    clf = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    from ray_rm.packed import unpack_sequences

    with torch.no_grad():
        plain = torch.cat([clf(input_ids=torch.tensor([s])).logits for s in unpack_sequences(row)])
    assert torch.allclose(plain, trained.attributes, atol=1e-4)
    loaded = load_reward_model(str(path), attn_implementation="sdpa")
    with torch.no_grad():
        again = loaded(batch)
    assert torch.allclose(again.attributes, trained.attributes, atol=1e-4)
    assert torch.allclose(again.rewards, trained.rewards, atol=1e-4)


def test_config_validation_names_the_attribute_keys():
    from ray_rm.config import ConfigError, load_config
    from ray_rm.config_schema import TrainJobConfig
    from ray_rm.validation import validate

    def check(*overrides):
        validate(load_config(TrainJobConfig, None, list(overrides)))

    check("model.head=attributes", "train.loss=attribute_mse", "model.attributes=[a,b]", "model.attribute_stds=[1,2]")
    with pytest.raises(ConfigError, match="train.loss 'bt' does not train a model.head=attributes head"):
        check("model.head=attributes", "train.loss=bt")
    with pytest.raises(ConfigError, match="settings of model.head=attributes, not scalar"):
        check("model.attributes=[a]")
    with pytest.raises(ConfigError, match="model.attribute_weights has 1 values but model.attributes names 2"):
        check("model.head=attributes", "train.loss=attribute_mse", "model.attributes=[a,b]", "model.attribute_weights=[1]")
    with pytest.raises(ConfigError, match="sequence_parallel_size=1"):
        check("model.head=attributes", "train.loss=attribute_mse", "train.num_workers=2",
              "train.sequence_parallel_size=2")
