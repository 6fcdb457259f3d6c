"""Collectives stay correct on every backend: placed on the group's device, equal in shape on every rank.

The eval pass is run by two real gloo processes where one rank has the only eval row and the other
none (the shipped RayJob's step-0 eval on 8 workers with ~3 eval rows): its metrics must equal a
single process evaluating that row. NCCL's device rule cannot be exercised without a GPU; the
source scan below keeps every host-side collective on the helper that applies it, and
``tests/test_gpu.py`` runs the real NCCL path.
"""
import ast
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO

COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "broadcast", "reduce", "barrier", "all_to_all",
               "all_to_all_single", "reduce_scatter", "gather", "scatter", "broadcast_object_list"}
# Ulysses moves activations that already live on the model's (= the group's) device.
ACTIVATION_COLLECTIVES = {"ray_rm/model/sequence_parallel.py"}


def test_host_collectives_go_through_the_device_helper():
    offenders = []
    for path in sorted((REPO / "ray_rm").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in ACTIVATION_COLLECTIVES or rel == "ray_rm/train/collectives.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "dist":
                offenders.append(f"{rel}:{node.lineno} dist.{node.func.attr}")
    assert offenders == [], "use ray_rm.train.collectives (group device) instead: " + ", ".join(offenders)


def _eval_worker(rank, world, init_file, model_dir, row, out_dir):
    from ray_rm.config_schema import ModelConfig
    from ray_rm.losses import LossSettings
    from ray_rm.model.build import build_reward_model
    from ray_rm.train.step import StepContext, evaluate

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = build_reward_model(ModelConfig(name_or_path=model_dir), seed=3)
        ctx = StepContext(engine=model, device=torch.device("cpu"), settings=LossSettings("internlm2", 0.01),
                          world_size=world, sp=None, sp_size=1, pad_token_id=0, pack_tokens=1024)
        rows = [row] if rank == 0 else [None]  # rank 1 has no eval row of its own: it runs a dummy
        torch.save(evaluate(ctx, rows), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(world, model_dir, row, out_dir):
    init_file = tempfile.mktemp(dir=out_dir)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_eval_worker, args=(r, world, init_file, model_dir, row, out_dir))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        if p.is_alive():
            p.kill()
            pytest.fail("an eval worker hung: collectives out of step across ranks")
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(world)]


@pytest.mark.slow  # three spawned torch processes (~70 s)
def test_eval_with_fewer_rows_than_workers_equals_one_worker(tiny_decoder_dir, tmp_path):
    from ray_rm.data.packer import pack_groups
    from test_model import random_groups

    row = next(iter(pack_groups(random_groups(4, seed=5), 1024, True, 64)))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (single,) = _run(1, tiny_decoder_dir, row, tmp_path / "one")
    two = _run(2, tiny_decoder_dir, row, tmp_path / "two")
    assert two[0] == two[1]  # every rank reports the same global metrics
    assert single["pairs"] == two[0]["pairs"] == 8  # groups of 3, 2, 2 and 3 responses: 3 + 1 + 1 + 3 pairs
    for key, value in single.items():
        assert two[0][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
