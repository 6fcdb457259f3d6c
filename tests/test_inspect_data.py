"""jobs/inspect_data.py, run as users run it, checked against figures computed here from scratch
(json + the tokenizer called directly + numpy), not through ray_rm's data path."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from ray_rm.config import iter_keys
from ray_rm.config_schema import DataConfig

from conftest import HH_TEST, REPO

JOB = REPO / "jobs" / "inspect_data.py"
EXTRA_ROWS = [{"prompt": "Is the sky blue? ", "chosen": "Yes, on a clear day.", "rejected": "No."},
              {"prompt": "Q? ", "chosen": "only one answer"},
              {"prompt": "Q? ", "chosen": "same", "rejected": "same"}]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(JOB), *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


@pytest.fixture(scope="module")
def extra_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "extra.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EXTRA_ROWS))
    return path


def reference(tokenizer_dir: str, extra_file, max_length: int) -> dict:
    """The same figures, computed independently: every pair is two plain-text sequences, tokenized as given."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [(r["chosen"], r["rejected"]) for r in map(json.loads, HH_TEST.read_text().splitlines())]
    texts.append((EXTRA_ROWS[0]["prompt"] + EXTRA_ROWS[0]["chosen"], EXTRA_ROWS[0]["prompt"] + EXTRA_ROWS[0]["rejected"]))
    dropped = Counter({"invalid:rejected": 1, "identical": 1})
    pairs = []
    for chosen, rejected in texts:
        seqs = [tok(t)["input_ids"] for t in (chosen, rejected)]
        if max(map(len, seqs)) > max_length:
            dropped["over_length"] += 1
        else:
            pairs.append(seqs)
    prefixes = []
    for a, b in pairs:
        n = 0
        while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
            n += 1
        prefixes.append(n)
    lengths = np.array([len(s) for p in pairs for s in p])
    real = padded = 0
    for i in range(0, len(pairs), 8):
        batch = [s for p in pairs[i:i + 8] for s in p]
        real += sum(map(len, batch))
        padded += len(batch) * max(map(len, batch))
    return {"rows_read": len(texts) + 2, "rows_kept": len(pairs), "dropped": dict(dropped), "lengths": lengths,
            "prefix_tokens": 2 * sum(prefixes), "saved": sum(prefixes), "padded": real / padded,
            "packed_tokens": int(lengths.sum()) - sum(prefixes)}


def test_json_figures_match_an_independent_computation(smollm2_dir, extra_file):
    proc = run("--data", str(HH_TEST), str(extra_file), "--tokenizer", smollm2_dir, "--json",
               "data.pack_tokens=2048", "data.max_length=512")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    ref = reference(smollm2_dir, extra_file, 512)

    assert got["rows_read"] == ref["rows_read"] == 203
    assert got["rows_kept"] == ref["rows_kept"] and got["dropped"] == ref["dropped"]
    assert got["dropped"]["over_length"] >= 1
    assert got["rows_dropped"] == sum(ref["dropped"].values())
    lengths = ref["lengths"]
    assert got["sequences"] == len(lengths) and got["sequence_tokens"] == int(lengths.sum())
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert got["length"][key] == pytest.approx(float(np.percentile(lengths, q)))
    assert got["length"]["max"] == int(lengths.max()) <= 512
    assert got["shared_prefix_share"] == pytest.approx(ref["prefix_tokens"] / lengths.sum())
    assert got["tokens_saved_by_sharing"] == ref["saved"]
    assert got["tokens_saved_fraction"] == pytest.approx(ref["saved"] / lengths.sum())
    assert got["padded_real_fraction"] == pytest.approx(ref["padded"])
    assert got["packed_tokens"] == ref["packed_tokens"]
    rows = got["packed_rows"]
    assert got["packed_real_fraction"] == pytest.approx(ref["packed_tokens"] / (rows * 2048))
    # one row per file at least; best-fit leaves at most a row or two of slack per file
    assert math.ceil(ref["packed_tokens"] / 2048) + 1 <= rows <= math.ceil(ref["packed_tokens"] / 2048) + 3
    assert got["pack_tokens"] == 2048 and got["share_prompt"] is True
    assert "extra.jsonl, row 2, field 'rejected'" in got["drop_examples"]["invalid:rejected"]


def test_table_output(smollm2_dir, extra_file):
    proc = run("--data", str(extra_file), "--tokenizer", smollm2_dir, "data.share_prompt=false")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for label in ("rows read                 3", "rows kept                 1", "rows dropped              2",
                  "invalid:rejected", "identical", "p50", "p90", "p99", "max", "packed", "padded",
                  "share_prompt=False", "shared-prefix share", "saved by prompt sharing"):
        assert label in out, label


def test_help_lists_every_data_key():
    proc = run("--help")
    assert proc.returncode == 0
    for key, _, default, help_text in iter_keys(DataConfig, "data."):
        assert key in proc.stdout and help_text.split()[0] in proc.stdout
    for option in ("--data", "--tokenizer", "--json", "--seed"):
        assert option in proc.stdout


def test_user_errors_exit_2_with_one_line(extra_file):
    proc = run("--data", str(extra_file), "--tokenizer", "x", "data.pack_tokns=10")
    assert proc.returncode == 2 and "data.pack_tokns" in proc.stderr and "data.pack_tokens" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run("--data", str(extra_file), "--tokenizer", "x", "train.lr=1")
    assert proc.returncode == 2 and "unknown config key 'train.lr'" in proc.stderr
    proc = run("--data", str(extra_file) + ".missing", "--tokenizer", "smollm2-135m-instruct")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: data source '{extra_file}.missing' does not exist "
                                                 "(expected a file, a folder, 'hf://<dataset>[:split]' or "
                                                 "'builtin:verifiable')"]
