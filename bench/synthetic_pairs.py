"""Synthetic preference pairs with hh-rlhf's real length distribution, for data-scale benchmarks.

Pair ``i`` of seed ``s`` is a pure function of ``(s, i)``: a real hh-rlhf-harmless row picked by a
hash of ``(s, i)`` (so the joint prompt / chosen / rejected length distribution is the real one,
empirically), with a few words of its prompt and of each response replaced by corpus words chosen
by the same hash (so no two pairs are the same text, while token counts stay close to the source
row's; ``--check`` measures both distributions with the SmolLM2 tokenizer). The prompt is edited
identically in chosen and rejected, so the implicit shared prompt stays shared, as in hh-rlhf.

Files are JSON Lines in hh-rlhf's own format (``{"chosen": "\\n\\nHuman: ...", "rejected": ...}``),
split into several shards so that readers get file-level parallelism; a ``manifest.json`` records
what was generated and ``ensure_pairs`` reuses a matching folder instead of rewriting it. Shard
layout does not change any pair's text: pair ``i`` is the same whichever file it lands in.

This is benchmark tooling: it must not be imported by the ray_rm library, and it never trains.

  python bench/synthetic_pairs.py --pairs 640000 --out /tmp/pairs640k [--seed 0] [--check]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HH_TRAIN = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "train.jsonl"
GENERATOR = "synthetic_pairs/1"
PROMPT_EDITS, RESPONSE_EDITS = 4, 2  # words replaced per pair in the prompt and in each response
_MASK = (1 << 64) - 1


class SourceRows:
    """The real rows, each split into (prompt, chosen suffix, rejected suffix), kept as JSON-escaped text
    with the character spans of its editable (alphabetic) words, so a pair is built by slicing strings."""

    def __init__(self, path: Path):
        self.parts: list[tuple[list[str], ...]] = []  # word lists (the reference form)
        self.escaped: list[tuple[str, ...]] = []
        self.spans: list[tuple[list[tuple[int, int]], ...]] = []
        vocab: set[str] = set()
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                split = split_prompt(row["chosen"], row["rejected"])
                if split is None:
                    continue
                words = tuple(text.split(" ") for text in split)
                self.parts.append(words)
                escaped = [_escaped_with_spans(ws) for ws in words]
                self.escaped.append(tuple(e for e, _ in escaped))
                self.spans.append(tuple(s for _, s in escaped))
                vocab.update(w for ws in words[1:] for w in ws if w.isalpha())
        if not self.parts:
            raise ValueError(f"{path}: no usable chosen/rejected rows")
        self.vocab = sorted(vocab)


def _escaped_with_spans(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """JSON string body of " ".join(words) and the spans of its alphabetic words (escaping is per character,
    and alphabetic words need none, so a span holds exactly the word)."""
    pieces, spans, pos = [], [], 0
    for w in words:
        e = json.dumps(w, ensure_ascii=False)[1:-1]
        if w.isalpha():
            spans.append((pos, pos + len(e)))
        pieces.append(e)
        pos += len(e) + 1
    return " ".join(pieces), spans


def split_prompt(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt through its last shared 'Assistant:' marker, chosen suffix, rejected suffix), or None."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind("\n\nAssistant:")
    if cut < 0 or chosen == rejected:
        return None
    cut += len("\n\nAssistant:")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def pair_hashes(seed: int, start: int, stop: int, width: int) -> np.ndarray:
    """uint64 [stop - start, width]: splitmix64 of (seed, pair index, column); independent of sharding."""
    idx = np.arange(start, stop, dtype=np.uint64)[:, None]
    col = np.arange(width, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        x = _splitmix(_splitmix(idx ^ np.uint64(seed * 0x9E3779B97F4A7C15 & _MASK)) + col * np.uint64(0xD1B54A32D192ED03))
    return x


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


EDITS = (PROMPT_EDITS, RESPONSE_EDITS, RESPONSE_EDITS)


def make_pair(src: SourceRows, h: list[int]) -> dict:
    """One pair from its hash row: h[0] picks the source row, the rest pick (slot, word) edits.
    The reference form; ``pair_line`` builds the same pair's JSON line ~10x faster."""
    r = h[0] % len(src.parts)
    words = [list(ws) for ws in src.parts[r]]
    for part, edits in enumerate(_edits(src, r, h)):
        slots = [k for k, w in enumerate(words[part]) if w.isalpha()]
        for slot, word in edits.items():
            words[part][slots[slot]] = word
    prompt, chosen, rejected = (" ".join(ws) for ws in words)
    return {"chosen": prompt + chosen, "rejected": prompt + rejected}


def pair_line(src: SourceRows, h: list[int]) -> str:
    """The JSON line of ``make_pair(src, h)``, spliced from pre-escaped text."""
    r = h[0] % len(src.parts)
    texts = []
    for part, edits in enumerate(_edits(src, r, h)):
        text, spans = src.escaped[r][part], src.spans[r][part]
        pieces, last = [], 0
        for slot in sorted(edits):
            a, b = spans[slot]
            pieces += [text[last:a], edits[slot]]
            last = b
        pieces.append(text[last:])
        texts.append("".join(pieces))
    return f'{{"chosen": "{texts[0]}{texts[1]}", "rejected": "{texts[0]}{texts[2]}"}}'


def _edits(src: SourceRows, r: int, h: list[int]) -> list[dict[int, str]]:
    """Per part: editable-word slot -> replacement word (a later edit of the same slot wins)."""
    out, k = [], 1
    for part, n in enumerate(EDITS):
        slots = len(src.spans[r][part])
        edits = {}
        for _ in range(n if slots else 0):
            edits[h[k] % slots] = src.vocab[h[k + 1] % len(src.vocab)]
            k += 2
        out.append(edits)
    return out


_HASH_WIDTH = 1 + 2 * sum(EDITS)
_SRC: SourceRows | None = None


def _write_shard(job: tuple[int, int, int, str]) -> int:
    seed, start, stop, path = job
    lines = [pair_line(_SRC, h) for h in pair_hashes(seed, start, stop, _HASH_WIDTH).tolist()]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return stop - start


def shard_bounds(pairs: int, files: int) -> list[tuple[int, int]]:
    """Near-equal contiguous index ranges, one per file."""
    edges = [round(pairs * k / files) for k in range(files + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def default_files(pairs: int, pairs_per_file: int = 10_000, min_files: int = 4) -> int:
    return max(min(min_files, pairs), math.ceil(pairs / pairs_per_file))


def generate(out: Path, pairs: int, seed: int = 0, files: int | None = None, source: Path = HH_TRAIN,
             processes: int | None = None) -> dict:
    """Write ``pairs`` pairs into ``out`` (replaced if present) as JSONL shards; returns the manifest."""
    global _SRC
    t0 = time.time()
    _SRC = SourceRows(source)
    files = files or default_files(pairs)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    jobs = [(seed, a, b, str(tmp / f"part-{k:05d}.jsonl")) for k, (a, b) in enumerate(shard_bounds(pairs, files))]
    processes = processes or min(len(jobs), os.cpu_count() or 1)
    if processes > 1:
        with get_context("fork").Pool(processes) as pool:
            written = sum(pool.imap_unordered(_write_shard, jobs))
    else:
        written = sum(map(_write_shard, jobs))
    manifest = {"generator": GENERATOR, "seed": seed, "pairs": written, "source": str(source),
                "source_rows": len(_SRC.parts), "files": [Path(j[3]).name for j in jobs],
                "bytes": sum(Path(j[3]).stat().st_size for j in jobs), "seconds": round(time.time() - t0, 2)}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def ensure_pairs(out: Path, pairs: int, seed: int = 0, files: int | None = None) -> tuple[list[str], dict]:
    """The shard paths for (pairs, seed), generated only when ``out`` does not already hold them."""
    want = {"generator": GENERATOR, "seed": seed, "pairs": pairs}
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    layout_ok = files is None or len(manifest.get("files", ())) == files
    if any(manifest.get(k) != v for k, v in want.items()) or not layout_ok or \
            not all((out / f).is_file() for f in manifest["files"]):
        manifest = generate(out, pairs, seed, files)
    return [str(out / f) for f in manifest["files"]], manifest


def length_stats(tokenizer, rows: list[dict]) -> dict:
    """Token-count quantiles of prompt, chosen suffix, rejected suffix and whole sequences."""
    cols: dict[str, list[int]] = {"prompt": [], "chosen_suffix": [], "rejected_suffix": [], "sequence": []}
    for row in rows:
        split = split_prompt(row["chosen"], row["rejected"])
        if split is None:
            continue
        n = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in split]
        cols["prompt"].append(n[0])
        cols["chosen_suffix"].append(n[1])
        cols["rejected_suffix"].append(n[2])
        cols["sequence"] += [n[0] + n[1], n[0] + n[2]]
    return {k: {"mean": round(float(np.mean(v)), 1), "p50": int(np.percentile(v, 50)),
                "p90": int(np.percentile(v, 90)), "max": int(max(v))} for k, v in cols.items()}


def check_lengths(files: list[str], sample: int) -> dict:
    """Compare synthetic and real token-length distributions with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO))
    from ray_rm.assets import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    real = [json.loads(line) for line in open(HH_TRAIN, encoding="utf-8")]
    synth = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                synth.append(json.loads(line))
                if len(synth) >= sample:
                    break
        if len(synth) >= sample:
            break
    return {"real": length_stats(tok, real), "synthetic": length_stats(tok, synth), "sample": len(synth)}


def check_reference(files: list[str], seed: int, sample: int) -> int:
    """Pairs among the first ``sample`` whose written line differs from the slow reference ``make_pair``."""
    src = SourceRows(HH_TRAIN)
    with open(files[0], encoding="utf-8") as fh:
        lines = [json.loads(line) for _, line in zip(range(sample), fh)]
    hashes = pair_hashes(seed, 0, len(lines), _HASH_WIDTH).tolist()
    return sum(row != make_pair(src, h) for row, h in zip(lines, hashes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder (replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--files", type=int, default=0, help="number of shards (0 = max(4, pairs / 10k))")
    p.add_argument("--check", action="store_true", help="tokenize a sample and compare lengths with hh-rlhf; "
                   "compare the fast writer with the reference builder")
    p.add_argument("--check-sample", type=int, default=1600)
    args = p.parse_args()
    manifest = generate(Path(args.out), args.pairs, args.seed, args.files or None)
    out = {"manifest": manifest}
    if args.check:
        files = [str(Path(args.out) / f) for f in manifest["files"]]
        out["lengths"] = check_lengths(files, args.check_sample)
        out["reference_mismatches"] = check_reference(files, args.seed, args.check_sample)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
