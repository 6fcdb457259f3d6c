"""Write the binary and huge cases of the bad-data corpus, which are generated rather than committed.

    python tests/data/make_bad_corpus.py OUT_DIR

The committed text cases live in ``tests/data/bad/``; ``tests/test_bad_data.py`` copies them to a
temporary folder and calls ``build`` there, so the repository stays small (no Parquet, Arrow, gzip,
invalid-UTF-8 or megabyte files) and every case in ``cases.json`` exists when the tests run.
Output is deterministic.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

GOOD = {"prompt": "Name a primary colour.", "chosen": " Red.", "rejected": " Purple."}
GOOD2 = {"chosen": "\n\nHuman: Is water wet?\n\nAssistant: Yes, water makes things wet.",
         "rejected": "\n\nHuman: Is water wet?\n\nAssistant: No idea, go away."}
HUGE_CHARS = 1_000_000


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _parquet(path: Path, rows: list, schema=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def build(out: str | Path) -> list[str]:
    """Write every generated case under ``out``; returns their names (relative paths)."""
    import pyarrow as pa

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def put(name: str, data: bytes) -> None:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
        written.append(name)

    # Latin-1 bytes in a row that claims to be UTF-8.
    put("non_utf8.jsonl", _jsonl([GOOD]) + b'{"prompt": "Colour?", "chosen": " Ro\xdfe.", "rejected": " Gris."}\n')
    # A byte-order mark written by an editor: accepted.
    put("utf8_bom.jsonl", b"\xef\xbb\xbf" + _jsonl([GOOD, GOOD2]))
    # One row of a megabyte: tokenized, then counted as over-length.
    put("huge_row.jsonl", _jsonl([GOOD, {"prompt": "Write a lot. ", "chosen": "la " * (HUGE_CHARS // 3),
                                         "rejected": "no."}]))
    put("good.jsonl.gz", gzip.compress(_jsonl([GOOD, GOOD2]), mtime=0))
    put("bad_row.jsonl.gz", gzip.compress(_jsonl([GOOD, {"prompt": "Colour?", "chosen": " Red."}]), mtime=0))
    put("parquet_not_parquet.parquet", b"chosen,rejected\nRed.,Purple.\n")

    typed = pa.schema([("prompt", pa.string()), ("chosen", pa.int64()), ("rejected", pa.string())])
    _parquet(out / "parquet_chosen_int.parquet",
             [{"prompt": "2+2?", "chosen": 4, "rejected": "5"}, {"prompt": "3+3?", "chosen": 6, "rejected": "7"}],
             typed)
    written.append("parquet_chosen_int.parquet")
    _parquet(out / "parquet_margin_string.parquet", [{**GOOD, "margin": "0.5"}, {**GOOD, "margin": "high"}])
    written.append("parquet_margin_string.parquet")
    _parquet(out / "parquet_bad_role.parquet", [
        {"chosen": _msgs(("user", "Colour?"), ("assistant", "Red.")),
         "rejected": _msgs(("user", "Colour?"), ("assistant", "Purple."))},
        {"chosen": _msgs(("human", "Colour?"), ("assistant", "Red.")),
         "rejected": _msgs(("human", "Colour?"), ("assistant", "Purple."))}])
    written.append("parquet_bad_role.parquet")
    # Columnar files give every row every column: nulls where a row has no scores or margin. Accepted.
    _parquet(out / "parquet_null_columns.parquet", [
        {**GOOD, "score_chosen": 8.0, "score_rejected": 3.0, "margin": None},
        {**GOOD2, "score_chosen": None, "score_rejected": None, "margin": 1.5}])
    written.append("parquet_null_columns.parquet")

    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_list([{"prompt": "2+2?", "chosen": 4, "rejected": "5"},
                                {"prompt": "3+3?", "chosen": 6, "rejected": "7"}]).save_to_disk(
        str(out / "hf_disk_chosen_int"))
    written.append("hf_disk_chosen_int")
    (out / "mixed_dir").mkdir(exist_ok=True)
    _parquet(out / "mixed_dir" / "chat.parquet", [
        {"prompt": _msgs(("user", "Colour?")), "chosen": _msgs(("assistant", "Red.")),
         "rejected": _msgs(("assistant", "Purple."))},
        {"prompt": _msgs(("user", "Shape?")), "chosen": _msgs(("assistant", "Round.")),
         "rejected": _msgs(("assistant", "Wobbly."))}])
    written.append("mixed_dir/chat.parquet")
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for name in build(sys.argv[1]):
        print(name)
