"""The Ray Data pipeline yields exactly what the Ray-free reference computes, in a seed-determined order.

Sources mix containers and formats (HH-RLHF JSON Lines split over several read tasks, a conversational
Parquet file, a JSONL file with bad rows, the built-in set) so several actors and the drop report are
exercised. Packed rows carry NaN margins/scores, so rows are compared with a NaN-aware equality.
"""
from __future__ import annotations

import json
import math

import pytest

from ray_rm.config_schema import DataConfig
from ray_rm.packed import PackedRow
from ray_rm.data.pipeline import PackSettings, direct_packed_rows, materialize, packed_dataset
from ray_rm.data.quality import DropReport

from conftest import HH_TEST

CFG = DataConfig(rows_per_read_task=64, tokenize_actors=2, pack_tokens=2048, max_length=1024, pack_window=64,
                 builtin_size=40)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_rm.data.demo_data import make_row

    root = tmp_path_factory.mktemp("pipeline")
    pq.write_table(pa.Table.from_pylist([make_row("verifiable-eval", i) for i in range(30)]), root / "chat.parquet")
    bad = root / "mixed.jsonl"
    bad.write_text("\n".join([
        json.dumps({"prompt": "Q? ", "chosen": "yes", "rejected": "no", "margin": 2.0}),
        json.dumps({"prompt": "Q? ", "chosen": "yes"}),
        json.dumps({"prompt": "Q? ", "chosen": "same", "rejected": "same"}),
        json.dumps({"prompt": "Q? ", "responses": ["a", "b", "c"], "scores": [0.5, 2, 1]}),
        '{"prompt": "Q? ", "chosen": "trunc',
    ]) + "\n")
    return [str(HH_TEST), str(root / "chat.parquet"), str(bad), "builtin:verifiable"]


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def rows_equal(got: list[PackedRow], want: list[PackedRow]) -> bool:
    """Field-by-field equality where NaN == NaN (margins and scores are NaN when absent)."""
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        for key, wv in w.to_record().items():
            gv = [x.item() if hasattr(x, "item") else x for x in getattr(g, key)]
            if len(gv) != len(wv) or not all(same(a, b) for a, b in zip(gv, wv)):
                return False
    return True


def settings(tokenizer_dir: str, seed: int | None) -> PackSettings:
    return PackSettings(tokenizer_path=tokenizer_dir, share_prompt=True, seed=seed)


def group_order(rows: list[PackedRow]) -> list[str]:
    return [gid for r in rows for gid in r.group_ids]


@pytest.mark.slow
def test_materialize_equals_direct(ray_local, files, smollm2_dir):
    want_rows, want_report = direct_packed_rows(files, CFG, settings(smollm2_dir, 11))
    assert want_report.dropped == {"invalid:rejected": 1, "invalid:row": 1, "identical": 1}
    assert want_report.rows_read == 200 + 30 + 5 + 40 and len(want_rows) > 5

    prepared = materialize(files, CFG, settings(smollm2_dir, 11))
    got_rows = [PackedRow.from_record(r) for r in prepared.dataset.take_all()]
    assert rows_equal(got_rows, want_rows)
    assert prepared.report.to_dict() == want_report.to_dict()
    assert prepared.num_rows == len(want_rows)
    assert prepared.num_groups == want_report.rows_kept == sum(len(r.group_ids) for r in want_rows)
    assert prepared.num_tokens == sum(r.num_tokens for r in want_rows)
    assert any(not math.isnan(m) for r in got_rows for m in r.group_margins)  # the margin survived the trip


@pytest.mark.slow
def test_stream_follows_the_seed(ray_local, files, smollm2_dir):
    """The lazy stream (packed rows + one report row per task) for another seed: the same groups and
    report, in that seed's order, which is again exactly the reference's."""
    stream = list(packed_dataset(files, CFG, settings(smollm2_dir, 12)).iter_rows())
    got = [PackedRow.from_record(r) for r in stream if r["kind"] == "packed"]
    report = DropReport()
    for r in stream:
        if r["kind"] == "report":
            report.merge(DropReport.from_dict(json.loads(r["report_json"])))
    want_rows, want_report = direct_packed_rows(files, CFG, settings(smollm2_dir, 12))
    assert rows_equal(got, want_rows) and report.to_dict() == want_report.to_dict()

    seed11_rows, seed11_report = direct_packed_rows(files, CFG, settings(smollm2_dir, 11))
    assert group_order(got) != group_order(seed11_rows)
    assert sorted(group_order(got)) == sorted(group_order(seed11_rows))
    assert report.to_dict() == seed11_report.to_dict()


def test_reference_is_deterministic(files, smollm2_dir):
    a = direct_packed_rows(files, CFG, settings(smollm2_dir, 11))
    b = direct_packed_rows(files, CFG, settings(smollm2_dir, 11))
    assert rows_equal(a[0], b[0]) and a[1].to_dict() == b[1].to_dict()


def test_no_seed_keeps_file_order(files, smollm2_dir):
    rows, _ = direct_packed_rows(files[:1], CFG, settings(smollm2_dir, None))
    ids = group_order(rows)
    first_task = [int(g.rsplit(":", 1)[1]) for g in ids if int(g.rsplit(":", 1)[1]) <= 64]
    assert sorted(first_task) == list(range(1, 65))  # task 1 (rows 1-64) is packed before task 2
    assert all(int(g.rsplit(":", 1)[1]) <= 64 for g in ids[:len(first_task)])


def test_hh_rlhf_with_default_settings_keeps_every_pair(smollm2_dir):
    """Defaults fit real data: data.max_length=0 (auto) resolves to min(8192, 4096 // 2) for SmolLM2 and
    HH-RLHF's 1600 training pairs (longest sequence 996 tokens) are all kept."""
    from conftest import HH_TRAIN
    from ray_rm.data.prepare import resolve_max_length

    assert DataConfig().max_length == 0
    assert resolve_max_length(DataConfig(), smollm2_dir).max_length == 2048
    assert resolve_max_length(DataConfig(pack_tokens=32768), smollm2_dir).max_length == 8192  # the model's context
    rows, report = direct_packed_rows([str(HH_TRAIN)], DataConfig(), settings(smollm2_dir, seed=None))
    assert report.rows_read == 1600 and report.rows_kept == 1600 and report.rows_dropped == 0, report.format()
    assert sum(len(r.group_ids) for r in rows) == 1600


@pytest.mark.slow
def test_rank_stream_with_a_window_equals_direct(ray_local, files, smollm2_dir):
    """A rank's stream (a subset of tasks, in the feed's order, executor capped at a 1 MiB window) yields
    exactly the records the Ray-free reference computes for those tasks, report rows included."""
    from ray_rm.data.pipeline import direct_task_records, make_encoder, ordered_tasks, tasks_dataset
    from ray_rm.data.prepare import resolve_max_length

    cfg = resolve_max_length(CFG, smollm2_dir)
    tasks = [t.to_dict() for t in ordered_tasks(files, cfg, 11)]
    mine = [(i, tasks[i]) for i in [3, 0, 2][:len(tasks)]]
    got = list(tasks_dataset(mine, cfg, settings(smollm2_dir, 11), actors=1, window_bytes=2 ** 20).iter_rows())
    want = list(direct_task_records(mine, make_encoder(smollm2_dir, cfg), cfg, settings(smollm2_dir, 11)))
    assert [r["task_index"] for r in got] == [r["task_index"] for r in want]
    assert [r["kind"] for r in got] == [r["kind"] for r in want] and want[0]["kind"] == "report"
    assert [r["report_json"] for r in got] == [r["report_json"] for r in want]
    assert rows_equal([PackedRow.from_record(r) for r in got if r["kind"] == "packed"],
                      [PackedRow.from_record(r) for r in want if r["kind"] == "packed"])


@pytest.mark.slow
def test_a_relative_data_path_is_read_by_ray_workers(ray_local, smollm2_dir, tmp_path, monkeypatch):
    """Read tasks run in Ray workers, whose working directory is not the driver's: a path relative to the
    driver's (``data.train_files: [data/train.jsonl]``, as the shipped example config has) must still be read."""
    folder = tmp_path / "rel_data"
    folder.mkdir()
    (folder / "pairs.jsonl").write_text("".join(HH_TEST.read_text().splitlines(keepends=True)[:20]))
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(rows_per_read_task=8, tokenize_actors=1, pack_tokens=2048, max_length=1024)
    stream = list(packed_dataset(["rel_data/pairs.jsonl"], cfg, settings(smollm2_dir, 3)).iter_rows())
    got = [PackedRow.from_record(r) for r in stream if r["kind"] == "packed"]
    want, report = direct_packed_rows([str(folder / "pairs.jsonl")], cfg, settings(smollm2_dir, 3))
    assert report.rows_read == 20 and rows_equal(got, want)
