"""The streaming feed on two real gloo ranks (torch.multiprocessing, no Ray): uneven shards step together,
an SP group gets identical rows, a resumed feed continues at exactly the next row, eval with fewer rows
than ranks stays in step, and the data summary accounts for every row.

The reference is ``direct_packed_rows``-style packing of every task in this process: the ranks together
must train exactly its pairs, each once per epoch. The Ray Data source of the same records is covered
by tests/test_pipeline.py (stream == direct) and the end-to-end training tests.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from conftest import HH_TEST, HH_TRAIN, free_port
from ray_rm.config_schema import DataConfig
from ray_rm.data.pipeline import PackSettings, direct_task_records, make_encoder, ordered_tasks
from ray_rm.train.feed_plan import FeedPlan, balanced_tasks, epoch_task_order, rank_tasks

CFG = DataConfig(train_files=[str(HH_TRAIN)], limit=60, rows_per_read_task=20, pack_tokens=1024, max_length=384,
                 pack_window=64)
SEED = 5
RESUME_AT = 2


def make_plan(tokenizer_dir: str) -> FeedPlan:
    settings = PackSettings(tokenizer_path=tokenizer_dir, share_prompt=True, seed=SEED)
    train = balanced_tasks(CFG.train_files, CFG, SEED, dp_size=1)  # 3 tasks of 20: uneven over 2 ranks
    one_pair = [t.to_dict() for t in ordered_tasks([str(HH_TEST)], replace(CFG, limit=1), None)]
    return FeedPlan(train, one_pair, CFG, settings, replace(settings, seed=None), actors_per_rank=1, actor_cpus=1.0,
                    window_bytes=0, estimated_steps_per_epoch=1)


def ids(rows: list) -> list:
    return [r.group_ids if r is not None else None for r in rows]


def _run_feed(plan, dp_size, dp_rank, counts, micro_steps=2, shuffle_window=3):
    from ray_rm.train.data_feed import WorkerFeed, direct_source

    source = direct_source(plan)
    return WorkerFeed(plan, dp_size, dp_rank, micro_steps, SEED, shuffle_window, source,
                      direct_source(plan, plan.eval_settings), counts_for_group=counts)


def _scenario(rank: int, world: int, plan: FeedPlan, out_dir: str, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out: dict = {}
    feed = _run_feed(plan, 2, rank, True)  # dp = 2
    for epoch in (0, 1):
        out[f"dp_epoch{epoch}"] = [(s, ids(rows), last) for s, rows, last in feed.steps(epoch)]
    resumed = _run_feed(plan, 2, rank, True)
    out["dp_resumed_epoch1"] = [(s, ids(rows), last) for s, rows, last in resumed.steps(1, RESUME_AT)]
    out["has_eval"] = feed.has_eval
    out["eval"] = [ids([r])[0] for r in feed.eval_rows()]
    out["dp_summary"] = feed.data_summary()  # after eval, as in the train loop
    sp = _run_feed(plan, 1, 0, rank == 0)  # an SP group of 2: both ranks are dp rank 0
    out["sp_epoch0"] = [(s, ids(rows), last) for s, rows, last in sp.steps(0)]
    out["sp_summary"] = sp.data_summary()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


@pytest.fixture(scope="module")  # two spawned processes importing transformers: ~35-55 s on 2 cores
def ranks(smollm2_dir, tmp_path_factory):
    plan = make_plan(smollm2_dir)
    out = tmp_path_factory.mktemp("feed")
    mp.spawn(_scenario, args=(2, plan, str(out), free_port()), nprocs=2, join=True)
    return plan, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def reference(ranks):
    """Every task packed in this process: (pair ids of all packed rows, total rows, drop report totals)."""
    plan, _ = ranks
    encoder = make_encoder(plan.settings.tokenizer_path, plan.data_cfg)
    records = list(direct_task_records(list(enumerate(plan.train_tasks)), encoder, plan.data_cfg, plan.settings))
    packed = [r for r in records if r["kind"] == "packed"]
    return Counter(i for r in packed for i in r["group_ids"]), len(packed)


def trained(steps: list) -> Counter:
    return Counter(i for _, micro, _ in steps for row in micro if row is not None for i in row)


@pytest.mark.slow
def test_uneven_shards_step_together_and_each_row_is_read_once(ranks, reference):
    plan, (r0, r1) = ranks
    want, num_rows = reference
    assert [len(rank_tasks(plan.train_tasks, 0, SEED, 2, r)) for r in (0, 1)] == [2, 1]  # uneven shards
    for epoch in ("dp_epoch0", "dp_epoch1"):
        assert [s for s, _, _ in r0[epoch]] == [s for s, _, _ in r1[epoch]]  # the same steps on both ranks
        assert [last for _, _, last in r0[epoch]][-1] and not any(last for _, _, last in r0[epoch][:-1])
        assert trained(r0[epoch]) + trained(r1[epoch]) == want  # every pair once per epoch, none twice
        assert not set(trained(r0[epoch])) & set(trained(r1[epoch]))
    assert any(row is None for _, micro, _ in r1["dp_epoch0"] for row in micro)  # the short rank padded
    assert any(epoch_task_order(3, e, SEED) != epoch_task_order(3, 0, SEED) for e in (1, 2, 3))  # reshuffled
    assert [m for _, m, _ in r0["dp_epoch0"]] != [m for _, m, _ in r0["dp_epoch1"]]
    summary = r0["dp_summary"]
    assert summary == r1["dp_summary"] and summary["train"]["rows"] == num_rows
    rows_trained = [sum(row is not None for _, micro, _ in r["dp_epoch0"] for row in micro) for r in (r0, r1)]
    assert summary["train"]["rows_per_dp_rank"] == rows_trained
    assert summary["train"]["report"]["rows_read"] == 60  # the drop report accounts for every row read
    assert summary["train"]["groups"] == summary["train"]["report"]["rows_kept"] == sum(want.values())


@pytest.mark.slow
def test_resumed_feed_continues_at_the_next_row(ranks, reference):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        assert r["dp_resumed_epoch1"] == r["dp_epoch1"][RESUME_AT:]
    before = Counter()
    for r in (r0, r1):
        before += trained(r["dp_epoch1"][:RESUME_AT])
    after = trained(r0["dp_resumed_epoch1"]) + trained(r1["dp_resumed_epoch1"])
    assert before + after == reference[0]  # same multiset of pair ids as the uninterrupted epoch


@pytest.mark.slow
def test_sequence_parallel_group_gets_identical_rows(ranks, reference):
    _, (r0, r1) = ranks
    assert r0["sp_epoch0"] == r1["sp_epoch0"]
    assert trained(r0["sp_epoch0"]) == reference[0]
    assert r0["sp_summary"]["train"]["rows"] == reference[1]  # counted once per SP group, not twice


@pytest.mark.slow
def test_eval_with_fewer_rows_than_ranks(ranks):
    _, (r0, r1) = ranks
    assert r0["has_eval"] and r1["has_eval"]
    assert len(r0["eval"]) == len(r1["eval"]) == 1  # the same number of forwards on both ranks
    assert r0["eval"][0] is not None and r1["eval"] == [None]
    assert r0["dp_summary"]["eval"]["report"]["rows_read"] == 1


def test_every_task_goes_to_exactly_one_rank_each_epoch():
    tasks = [{"start": i, "stop": i + 1} for i in range(7)]
    for epoch in range(3):
        got = [i for rank in range(3) for i, _ in rank_tasks(tasks, epoch, SEED, 3, rank)]
        assert sorted(got) == list(range(7))
    assert [len(rank_tasks(tasks, 0, SEED, 3, r)) for r in range(3)] == [3, 2, 2]


def test_small_sources_are_split_so_every_rank_reads(smollm2_dir):
    assert len(balanced_tasks(CFG.train_files, replace(CFG, rows_per_read_task=2000), SEED, dp_size=4)) == 8


def test_epoch_length_estimate_is_close_to_the_packed_count(smollm2_dir):
    """The sampled estimate (40 of 160 pairs packed) against every rank's real packed row count."""
    from ray_rm.train.feed_plan import estimate_steps_per_epoch

    cfg = replace(CFG, limit=160, rows_per_read_task=40, step_estimate_pairs=40)
    settings = PackSettings(tokenizer_path=smollm2_dir, share_prompt=True, seed=SEED)
    tasks = balanced_tasks(cfg.train_files, cfg, SEED, dp_size=2)
    encoder = make_encoder(smollm2_dir, cfg)
    estimate = estimate_steps_per_epoch(tasks, encoder, cfg, settings, dp_size=2, micro_steps=1)
    real = max(sum(r["kind"] == "packed" for r in direct_task_records(rank_tasks(tasks, 0, SEED, 2, rank), encoder,
                                                                      cfg, settings)) for rank in (0, 1))
    assert abs(estimate - real) <= 0.25 * real, (estimate, real)


def test_stream_actors_take_a_share_of_what_the_workers_leave():
    """A cluster the workers fill must not leave the stream actors unplaceable (the job would hang at step 0)."""
    from ray_rm.train.feed_plan import stream_actor_cpus

    assert stream_actor_cpus(free_cpus=4.0, streams=2, actors_per_stream=1) == 1.0  # room: a whole CPU each
    assert stream_actor_cpus(free_cpus=1.75, streams=2, actors_per_stream=1) == 0.87  # 4 CPUs, 2 workers, 0.25 held
    assert stream_actor_cpus(free_cpus=0.0, streams=2, actors_per_stream=2) == 0.0
    assert stream_actor_cpus(free_cpus=-1.0, streams=1, actors_per_stream=1) == 0.0  # workers alone overfill it


def test_tasks_of_unequal_size_are_dealt_by_rows():
    """4 files of 2500 rows in tasks of 2000: four 2000-row and four 500-row tasks; by position one rank could
    get 6500 rows and the other 3500. Dealt by rows, both get 5000 in every epoch, each task exactly once."""
    tasks = [{"start": s, "stop": e} for _ in range(4) for s, e in ((0, 2000), (2000, 2500))]
    for epoch in range(4):
        mine = [rank_tasks(tasks, epoch, SEED, 2, r) for r in (0, 1)]
        assert [sum(t["stop"] - t["start"] for _, t in m) for m in mine] == [5000, 5000]
        assert sorted(i for m in mine for i, _ in m) == list(range(8))
        order = epoch_task_order(8, epoch, SEED)  # each rank reads its tasks in the epoch's order
        assert all([i for i, _ in m] == [i for i in order if i in {j for j, _ in m}] for m in mine)
