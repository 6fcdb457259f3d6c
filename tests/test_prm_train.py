"""model.head=prm, data to loss: every stepwise input form reaches packed rows with the right step ends and
labels, bad rows raise or are counted, per-step scores are the same packed (prompt shared, several
groups per row) as run alone through the plain backbone, and the step BCE equals a hand computation,
averaged exactly over the labelled steps of an optimizer step however the rows were split."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ray_rm.config_schema import DataConfig, ModelConfig
from ray_rm.data.packer import pack_groups
from ray_rm.data.pipeline import PackSettings, direct_packed_rows
from ray_rm.data.step_groups import step_group
from ray_rm.data.step_layout import step_end_token_positions
from ray_rm.data.stepwise import normalize_step_row
from ray_rm.errors import DataError
from ray_rm.losses import UNITS, LossSettings, compute_loss
from ray_rm.model.batch import collate_row
from ray_rm.model.build import build_reward_model
from ray_rm.packed import unpack_sequences
from ray_rm.train.loss_scale import mean_loss, scaled_loss, unit_factors

TRL_ROW = {"prompt": "What is 2 + 3 * 4?\n", "completions": ["3 * 4 = 12", "2 + 12 = 15"], "labels": [True, False]}
SHEPHERD_ROW = {"input": "What is 2 + 3 * 4? Step 1: 3 * 4 = 12 ки\nStep 2: 2 + 12 = 14 ки\n",
                "label": "What is 2 + 3 * 4? Step 1: 3 * 4 = 12 +\nStep 2: 2 + 12 = 14 +\n", "task": "GSM8K"}
MULTI_ROW = {"prompt": [{"role": "user", "content": "Start with 5, add 3, then multiply by 2."}],
             "solutions": [{"steps": ["5 + 3 = 8", "8 * 2 = 16"], "labels": [1, 1]},
                           {"steps": ["5 + 3 = 9", "9 * 2 = 18"], "labels": [0, None]},
                           {"steps": ["5 + 3 = 8", "8 * 2 = 17"], "labels": [True, False]}]}


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _write(tmp_path, rows, name="steps.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(path, tokenizer_dir, **data):
    cfg = DataConfig(train_files=[path], max_length=512, pack_tokens=1024, shuffle=False, **data)
    settings = PackSettings(tokenizer_path=tokenizer_dir, share_prompt=True, head="prm")
    return direct_packed_rows([path], cfg, settings)


def _steps_by_sequence(row):
    """{sequence: [(row position, label), ...]} from a packed row."""
    out = {}
    for pos, label, seq in zip(row.step_index, row.step_labels, row.step_seq):
        out.setdefault(seq, []).append((pos, label))
    return out


@pytest.mark.parametrize("raw,labels", [
    (TRL_ROW, [[1.0, 0.0]]), (SHEPHERD_ROW, [[1.0, 1.0]]),
    (MULTI_ROW, [[1.0, 1.0], [0.0, math.nan], [1.0, 0.0]]),
])
def test_each_input_form_reaches_packed_rows_with_its_step_ends_and_labels(tmp_path, tokenizer_dir, tok, raw, labels):
    rows, report = _rows(_write(tmp_path, [raw]), tokenizer_dir)
    assert report.rows_read == report.rows_kept == 1 and len(rows) == 1
    row = rows[0]
    ex = normalize_step_row(raw, "x", 1)
    seqs = unpack_sequences(row)
    assert len(seqs) == len(ex.solutions)
    steps = _steps_by_sequence(row)
    sep_last = tok("\n", add_special_tokens=False)["input_ids"][-1]
    for s, (solution, want) in enumerate(zip(ex.solutions, labels)):
        ref = step_end_token_positions(tok, ex.prompt, solution, "\n")
        assert seqs[s] == ref.input_ids  # the step_layout rule, prompt shared or not
        got = steps[s]
        assert [row.input_ids[p] for p, _ in got] == [sep_last] * len(solution)
        assert [ref.input_ids[e] for e in ref.step_ends] == [row.input_ids[p] for p, _ in got]
        assert [lab for _, lab in got] == pytest.approx(want, nan_ok=True)
    if len(ex.solutions) > 1:
        assert row.group_prefix_lens[0] > 0  # the prompt is laid out once


def test_last_step_only_keeps_each_solutions_last_label(tok):
    ex = normalize_step_row(MULTI_ROW, "x", 1)
    group = step_group(tok, ex, "\n", last_step_only=True)
    as_text = [["-" if math.isnan(v) else v for v in sol] for sol in group.step_labels]
    assert as_text == [["-", 1.0], ["-", "-"], ["-", 0.0]]


def test_cut_at_first_error_ends_each_solution_at_its_first_wrong_step(tok):
    row = {"prompt": MULTI_ROW["prompt"], "solutions": MULTI_ROW["solutions"] + [
        {"steps": ["5 + 3 = 8", "8 + 1 = 9", "9 * 2 = 18"], "labels": [None, False, False]}]}
    ex = normalize_step_row(row, "x", 1)
    group = step_group(tok, ex, "\n", cut_first_error=True)
    as_text = [["-" if math.isnan(v) else v for v in sol] for sol in group.step_labels]
    assert as_text == [[1.0, 1.0], [0.0], [1.0, 0.0], ["-", 0.0]]  # an unlabelled step is not an error
    for s, (steps, n) in enumerate(zip(ex.solutions, (2, 1, 2, 2))):
        alone = step_end_token_positions(tok, ex.prompt, steps[:n], "\n")
        assert group.sequences[s] == alone.input_ids and group.step_ends[s] == alone.step_ends  # the text is cut


def test_the_train_job_passes_the_cut_and_the_weight_to_packing_and_the_loss(tmp_path, tiny_decoder_dir, tok):
    from transformers import AutoConfig

    from ray_rm.train.driver import _pack_settings
    from train_helpers import tiny_config

    path = _write(tmp_path, [MULTI_ROW])
    cfg = tiny_config(tiny_decoder_dir, tmp_path / "run", **{
        "model.head": "prm", "train.loss": "step_bce", "data.train_files": path,
        "train.prm_cut_at_first_error": True, "train.prm_pos_weight": 0.4})
    settings = _pack_settings(cfg, tiny_decoder_dir, AutoConfig.from_pretrained(tiny_decoder_dir))[0]
    (row,), _ = direct_packed_rows([path], DataConfig(max_length=512, pack_tokens=1024, shuffle=False), settings)
    labels = {seq: [lab for _, lab in steps] for seq, steps in _steps_by_sequence(row).items()}
    assert labels == {0: [1.0, 1.0], 1: [0.0], 2: [1.0, 0.0]}  # the second solution ends at its wrong step
    assert LossSettings.from_train_config(cfg.train).prm_pos_weight == 0.4


BAD_ROWS = [
    ({"prompt": "p", "completions": ["a", "b"], "labels": [True]}, "labels", "has 1 labels but 'completions' has 2"),
    ({"prompt": "p", "completions": ["a", "  "], "labels": [True, False]}, "completions[1]", ""),
    ({"prompt": "p", "completions": ["a"], "labels": [0.7]}, "labels[0]", "expected true, false, 0, 1 or null"),
    ({"prompt": "p", "completions": ["a"], "labels": ["+"]}, "labels[0]", "expected true, false"),
    ({"prompt": "p", "solutions": [{"steps": []}]}, "solutions[0].steps", "non-empty list"),
    ({"input": "Q Step 1: a ки b", "label": "Q Step 1: a + b"}, "input", "text after the last step tag"),
]


@pytest.mark.parametrize("bad,field,message", BAD_ROWS)
def test_each_bad_row_class_raises_naming_file_row_and_field_or_is_counted(tmp_path, tokenizer_dir, bad, field,
                                                                           message):
    path = _write(tmp_path, [TRL_ROW, bad, MULTI_ROW])
    with pytest.raises(DataError) as err:
        _rows(path, tokenizer_dir, on_error="raise")
    text = str(err.value)
    assert "steps.jsonl" in text and "row 2" in text and field in text and message in text
    rows, report = _rows(path, tokenizer_dir, on_error="drop")
    assert report.rows_read == 3 and report.rows_kept == 2
    assert report.rows_dropped == 1 and next(iter(report.dropped)).startswith("invalid:")
    assert sum(len(r.group_ids) for r in rows) == 2


def test_over_length_solutions_are_counted(tmp_path, tokenizer_dir):
    rows, report = _rows(_write(tmp_path, [TRL_ROW, MULTI_ROW]), tokenizer_dir, on_error="raise")
    longest = max(r.seq_full_lens[0] for r in rows)
    cfg = DataConfig(max_length=longest - 1, pack_tokens=1024, shuffle=False)
    path = _write(tmp_path, [TRL_ROW, MULTI_ROW], "b.jsonl")
    rows, report = direct_packed_rows([path], cfg, PackSettings(tokenizer_dir, True, head="prm"))
    assert report.rows_read == 2 and report.dropped.get("over_length") == 1


# ------------------------------------------------------------------ model: packed == unpacked, loss by hand
@pytest.fixture(scope="module")
def prm_model(tiny_decoder_dir):
    return build_reward_model(ModelConfig(name_or_path=tiny_decoder_dir, head="prm", attn_implementation="auto"),
                              seed=3).eval()


def _demo_groups(tok, n=6):
    from ray_rm.data import demo_prm

    return [step_group(tok, normalize_step_row(demo_prm.make_row("arith-steps", i), "demo", i + 1), "\n")
            for i in range(n)]


def _alone_step_scores(model, seq, ends):
    with torch.no_grad():
        hidden = model.backbone(input_ids=torch.tensor([seq]), use_cache=False).last_hidden_state[0]
        return model._head(hidden[ends]).tolist()


@pytest.mark.parametrize("share_prompt", [True, False])
def test_packed_step_scores_equal_each_solution_run_alone(prm_model, tok, share_prompt):
    groups = _demo_groups(tok)
    rows = list(pack_groups(groups, 1200, share_prompt, 64))
    assert any(len(r.group_ids) > 1 for r in rows)  # several prompts per row
    got, want = [], []
    by_id = {g.example_id: g for g in groups}
    for row in rows:
        with torch.no_grad():
            scores = prm_model(collate_row(row)).rewards.tolist()
        assert len(scores) == len(row.step_index)
        got += scores
        for gid in row.group_ids:
            g = by_id[gid]
            for seq, ends in zip(g.sequences, g.step_ends):
                want += _alone_step_scores(prm_model, seq, ends)
    assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("pos_weight", [1.0, 0.4])
def test_step_bce_equals_a_hand_computed_value_and_the_step_mean_is_exact_however_packed(prm_model, tok, pos_weight):
    groups = _demo_groups(tok, 5)
    one_row = list(pack_groups(groups, 4000, True, 64))
    split = list(pack_groups(groups[:2], 4000, True, 64)) + list(pack_groups(groups[2:], 4000, True, 64))
    assert len(one_row) == 1 and len(split) == 2
    settings = LossSettings("step_bce", prm_pos_weight=pos_weight)
    # by hand: mean over every labelled step of -[w y log σ(s) + (1-y) log(1-σ(s))], each solution run alone
    # (w = train.prm_pos_weight; the mean is over steps, not weights)
    terms = []
    for g in groups:
        for seq, ends, labels in zip(g.sequences, g.step_ends, g.step_labels):
            for s, y in zip(_alone_step_scores(prm_model, seq, ends), labels):
                p = 1 / (1 + math.exp(-s))
                terms.append(-(pos_weight * y * math.log(p) + (1 - y) * math.log(1 - p)))
    hand = sum(terms) / len(terms)

    def step_mean(rows):
        batches = [collate_row(r) for r in rows]
        counts = {u: sum(compute_loss(prm_model(b), b, settings).counts[u] for b in batches)
                  for u in UNITS}
        factors = unit_factors(counts, world_size=1)
        with torch.no_grad():
            results = [compute_loss(prm_model(b), b, settings) for b in batches]
        backprop = sum(float(scaled_loss(r.terms, factors, torch.zeros(()))) for r in results)
        reported = mean_loss((("step_bce", "steps"),), [sum(float(r.terms["step_bce"][0]) for r in results)], counts)
        assert counts["steps"] == len(terms)
        return backprop, reported

    for rows in (one_row, split):
        backprop, reported = step_mean(rows)
        assert backprop == pytest.approx(hand, rel=1e-5) and reported == pytest.approx(hand, rel=1e-5)


def test_unlabelled_steps_are_masked_out_of_the_loss(prm_model, tok):
    ex = normalize_step_row(MULTI_ROW, "x", 1)
    labelled = step_group(tok, ex, "\n")
    row = next(iter(pack_groups([labelled], 1000, True)))
    batch = collate_row(row)
    assert batch.num_labelled_steps == 5  # one of the six steps is null
    with torch.no_grad():
        res = compute_loss(prm_model(batch), batch, LossSettings("step_bce"))
        scores = prm_model(batch).rewards
    known = torch.isfinite(batch.step_labels)
    y = batch.step_labels[known]
    p = torch.sigmoid(scores[known])
    assert float(res.terms["step_bce"][0]) == pytest.approx(float(-(y * p.log() + (1 - y) * (1 - p).log()).sum()),
                                                            rel=1e-6)
