"""What an uneven Ulysses head split costs: SP attention (all-to-all, per-segment attention, all-to-all
back) forward + backward on S gloo processes, for head counts S divides and does not divide.

Each configuration times ``SequenceParallelContext.attention`` on random q/k/v over one packed row of
``--tokens`` tokens in ``--segment``-token blocks (head_dim 64), as the SP train step runs it per layer.
A rank's time is its own forward + backward; the step waits for the slowest rank, so the figure is the
median over repetitions (configurations interleaved, so background load on a shared machine hits them
alike; the best repetition is reported too) of the slowest rank. The comparison that matters:
  * ``uneven`` (9 heads on 2 ranks: 5 + 4) vs the even split it would ideally be, scaled from 8 heads
    (4 + 4): ``t(9) / (t(8) * 9 / 8) - 1`` is the extra cost of the uneven split per head of work;
  * zero-padding 9 heads to 10 (5 + 5, what the alternative design would run) bounds it from above.
Attention is only part of a layer (MLPs and norms run on local tokens at any head count), so the cost
to a training step is smaller than this ratio.

  python bench/sp_uneven_heads.py [--size 2] [--tokens 2048] [--repeats 5]
Prints JSON and writes bench/results/sp_uneven_heads.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from results_file import save_results  # noqa: E402
RESULTS = REPO / "bench" / "results"
HEAD_DIM = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_rank(rank: int, size: int, port: int, configs: list, tokens: int, segment: int, repeats: int,
               out: str) -> None:
    import torch
    import torch.distributed as dist

    from ray_rm.model.batch import AttentionBlock
    from ray_rm.model.attention import AttentionPlan
    from ray_rm.model.sequence_parallel import SequenceParallelContext

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    sp = SequenceParallelContext.create_groups(size, size, rank)
    blocks = [AttentionBlock(s, min(segment, tokens - s)) for s in range(0, tokens, segment)]
    plan = AttentionPlan.build(blocks, tokens, torch.device("cpu"), backend="sdpa_blocks")
    sp.total = tokens
    local = tokens // size
    tensors = {}
    for heads, kv in configs:
        gen = torch.Generator().manual_seed(rank)
        tensors[(heads, kv)] = [torch.randn(1, n, local, HEAD_DIM, generator=gen, requires_grad=True)
                                for n in (heads, kv, kv)]
    times: dict = {c: [] for c in configs}
    for i in range(repeats + 2):  # two warm-up rounds; configs interleaved so all see the same background load
        for c in configs:
            q, k, v = tensors[c]
            dist.barrier()
            t0 = time.perf_counter()
            sp.attention(plan, q, k, v, HEAD_DIM ** -0.5).sum().backward()
            elapsed = torch.tensor([time.perf_counter() - t0])
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the step waits for the slowest rank
            if i >= 2:
                times[c].append(float(elapsed))
    results = {f"{h}h/{kv}kv": {"heads": h, "kv_heads": kv, "seconds": statistics.median(ts), "best_seconds": min(ts),
                                "heads_per_rank": sp_counts(h, size)} for (h, kv), ts in times.items()}
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def sp_counts(heads: int, size: int) -> list[int]:
    from ray_rm.model.sequence_parallel import HeadSplit

    return HeadSplit(heads, heads, size).counts


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = list(result["configs"])
    per_head = [result["configs"][n]["seconds"] / result["configs"][n]["heads"] * 1e3 for n in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(len(names)), per_head, color=["C0" if result["configs"][n]["heads"] % result["size"] == 0
                                               else "C3" for n in names])
    ax.set_xticks(range(len(names)), [f"{n}\n{result['configs'][n]['heads_per_rank']}" for n in names], fontsize=8)
    ax.set_ylabel("ms per head (fwd + bwd, slowest rank)")
    ax.set_title(f"Ulysses SP={result['size']}, {result['tokens']} tokens: uneven split "
                 f"+{result['uneven_extra_vs_even'] * 100:.1f}% per head")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2, help="sequence-parallel ranks (gloo processes)")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens in the packed row")
    parser.add_argument("--segment", type=int, default=256, help="tokens per attention block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the JSON and PNG go")
    args = parser.parse_args(argv)
    import torch.multiprocessing as mp

    s = args.size
    even, uneven, padded = 4 * s, 4 * s + 1, 5 * s  # e.g. S=2: 8 (4+4), 9 (5+4), 10 (5+5)
    configs = [(even, even), (uneven, uneven), (padded, padded), (9, 3)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        mp.spawn(_time_rank, args=(s, _free_port(), configs, args.tokens, args.segment, args.repeats, str(out)),
                 nprocs=s, join=True)
        times = json.loads(out.read_text())
    t = {h: times[f"{h}h/{h}kv"]["seconds"] for h in (even, uneven, padded)}
    result = {"size": s, "tokens": args.tokens, "segment": args.segment, "head_dim": HEAD_DIM, "configs": times,
              "uneven_extra_vs_even": t[uneven] / (t[even] * uneven / even) - 1,
              "zero_padded_extra_vs_even": t[padded] / (t[even] * uneven / even) - 1,
              "ideal_extra_uneven": (-(-uneven // s)) / (uneven / s) - 1}
    save_results(result, args.results_dir, "sp_uneven_heads", plot)
    return result


if __name__ == "__main__":
    main()
