"""Where preference rows come from: files, folders, saved HF datasets, the hub, and the built-in demo set.

It must not parse rows into examples (``formats.py``) or import Ray; it only finds and reads rows.

The driver plans ``ReadTask``s (row ranges, with byte offsets for JSONL so a task seeks instead of
rescanning); Ray Data tasks then read their range with ``read_task_rows``. Row numbers are 1-based
line numbers for JSON Lines and 1-based row indices otherwise, so error messages match an editor.
"""
from __future__ import annotations

import glob
import gzip
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ray_rm.errors import DataError

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
BUILTIN_PREFIX = "builtin:"
HUB_PREFIX = "hf://"


@dataclass(frozen=True)
class ReadTask:
    source: str
    kind: str  # jsonl | json_array | parquet | hf_disk | hf_hub | builtin
    start: int  # first row, 0-based
    stop: int
    byte_start: int = 0  # jsonl: byte offset of row `start`
    builtin_size: int = 0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ReadTask":
        return cls(**{k: (int(v) if k not in ("source", "kind") else str(v)) for k, v in d.items()})


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or \
        (path / "state.json").is_file()


def expand_sources(specs: list[str]) -> list[tuple[str, str]]:
    """Resolve user specs into (source, kind) pairs; folders expand to their data files, sorted.

    Local paths come out absolute, resolved against this process's working directory: the read tasks go to Ray
    workers, whose working directory is not the driver's (a relative ``data/train.jsonl`` would not be found)."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        if spec.startswith(BUILTIN_PREFIX):
            out.append((spec, "builtin"))
            continue
        if spec.startswith(HUB_PREFIX):
            out.append((spec, "hf_hub"))
            continue
        matches = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
        if not matches:
            raise DataError(f"no files match '{spec}'")
        for m in matches:
            path = Path(m).absolute()
            if path.is_dir():
                if _is_saved_dataset(path):
                    out.append((str(path), "hf_disk"))
                    continue
                files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
                data = [p for p in files if p.name.endswith(JSON_SUFFIXES + PARQUET_SUFFIXES)]
                other = [p.name for p in files if p not in data]
                if other:
                    log.warning("ignoring %d non-data files in %s: %s", len(other), path, ", ".join(other[:5]))
                if not data:
                    raise DataError(f"folder '{path}' holds no .jsonl, .json or .parquet files")
                out.extend(_file_kind(p) for p in data)
            elif path.is_file():
                out.append(_file_kind(path))
            else:
                raise DataError(f"data source '{spec}' does not exist (expected a file, a folder, "
                                f"'{HUB_PREFIX}<dataset>[:split]' or '{BUILTIN_PREFIX}verifiable')")
    return out


def _file_kind(path: Path) -> tuple[str, str]:
    name = path.name
    if name.endswith(PARQUET_SUFFIXES):
        return str(path), "parquet"
    if name.endswith(".json"):
        return str(path), ("jsonl" if _first_line_is_object(path) else "json_array")
    if name.endswith(JSON_SUFFIXES):
        return str(path), "jsonl"
    raise DataError(f"'{path}': unsupported file type (use .jsonl, .json or .parquet)")


def _first_line_is_object(path: Path) -> bool:
    """A .json file is JSON Lines when its first non-blank line is a whole JSON object on its own;
    anything else (an array, a pretty-printed object) is parsed as one JSON document."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    return isinstance(json.loads(line.decode("utf-8-sig")), dict)
                except ValueError:  # JSONDecodeError and UnicodeDecodeError
                    return False
    return True  # empty: no rows either way


def _open_binary(path: str):
    """JSON Lines files may be gzip-compressed (.jsonl.gz); gzip streams support the seeks read tasks use."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _jsonl_line_offsets(path: str, every: int, limit: int) -> tuple[list[int], int]:
    """Byte offsets of lines 0, every, 2*every, ... and the number of lines (capped at limit).

    A file with no non-blank line yields no offsets, so an empty or blank file plans no read task."""
    offsets, n, pos, nonblank = [], 0, 0, 0
    with _open_binary(path) as fh:
        for line in fh:
            if limit and n >= limit:
                break
            if n % every == 0:
                offsets.append(pos)
            pos += len(line)
            n += 1
            nonblank += bool(line.strip())
    return (offsets, n) if nonblank else ([], 0)


def _count_rows(source: str, kind: str, builtin_size: int) -> int:
    if kind == "parquet":
        return _parquet_file(source).metadata.num_rows
    if kind == "json_array":
        return len(_load_json_array(source))
    if kind in ("hf_disk", "hf_hub"):
        return len(_load_hf(source, kind))
    if kind == "builtin":
        from ray_rm.data.builtin_sets import builtin_rows
        return builtin_rows(source, builtin_size, 0, 0, count_only=True)
    raise AssertionError(kind)


def plan_read_tasks(specs: list[str], rows_per_task: int = 2000, limit: int = 0, builtin_size: int = 600,
                    seed: int = 0) -> list[ReadTask]:
    """Split every source into row ranges of at most ``rows_per_task`` rows."""
    tasks: list[ReadTask] = []
    for source, kind in expand_sources(specs):
        if kind == "jsonl":
            offsets, n = _jsonl_line_offsets(source, rows_per_task, limit)
            for i, off in enumerate(offsets):
                start = i * rows_per_task
                tasks.append(ReadTask(source, kind, start, min(n, start + rows_per_task), byte_start=off))
            continue
        n = _count_rows(source, kind, builtin_size)
        if limit:
            n = min(n, limit)
        for start in range(0, n, rows_per_task):
            tasks.append(ReadTask(source, kind, start, min(n, start + rows_per_task),
                                  builtin_size=builtin_size, seed=seed))
    if not tasks:
        raise DataError(f"no rows found in {', '.join(specs)} (empty files?)")
    return tasks


def _load_json_array(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path) from None
    if not isinstance(data, list):
        raise DataError(f"a .json file must hold a list of rows or JSON Lines, got {type(data).__name__}", path)
    return data


def _parquet_file(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", path) from None


def _load_hf(source: str, kind: str):
    import datasets

    if kind == "hf_disk":
        try:
            ds = datasets.load_from_disk(source)
        except Exception as exc:  # noqa: BLE001 - corrupt folders fail in many ways; name the folder
            raise DataError(f"could not load the saved dataset ({type(exc).__name__}: {exc})", source) from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"saved DatasetDict has splits {list(ds)}; point at one split's folder", source)
            ds = ds["train"]
        return ds
    name = source[len(HUB_PREFIX):]
    name, _, split = name.partition(":")
    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - the hub can fail in many ways; the user needs the reason
        raise DataError(f"could not load hub dataset '{name}' ({type(exc).__name__}: {exc}); "
                        f"is this machine online?", source) from None


def read_task_rows(task: ReadTask) -> Iterator[tuple[int, object]]:
    """Yield (1-based row number, parsed row or DataError) for every row of the task's range."""
    if task.kind == "jsonl":
        yield from _read_jsonl(task)
    elif task.kind == "json_array":
        rows = _load_json_array(task.source)
        for i in range(task.start, task.stop):
            yield i + 1, rows[i]
    elif task.kind == "parquet":
        yield from _read_parquet(task)
    elif task.kind in ("hf_disk", "hf_hub"):
        ds = _load_hf(task.source, task.kind)
        for i, row in enumerate(ds.select(range(task.start, task.stop)), start=task.start):
            yield i + 1, row
    elif task.kind == "builtin":
        from ray_rm.data.builtin_sets import builtin_rows
        for i, row in enumerate(builtin_rows(task.source, task.builtin_size, task.start, task.stop),
                                start=task.start):
            yield i + 1, row
    else:
        raise AssertionError(task.kind)


def _read_jsonl(task: ReadTask) -> Iterator[tuple[int, object]]:
    with _open_binary(task.source) as fh:
        fh.seek(task.byte_start)
        for lineno in range(task.start + 1, task.stop + 1):
            raw = fh.readline()
            if not raw.strip():
                continue  # blank lines are not rows
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # editors may write a BOM
            except UnicodeDecodeError as exc:
                yield lineno, DataError(f"not valid UTF-8 ({exc.reason} at byte {exc.start} of the line)",
                                        task.source, lineno)
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as exc:
                yield lineno, DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", task.source, lineno)


def _read_parquet(task: ReadTask) -> Iterator[tuple[int, object]]:
    pf = _parquet_file(task.source)
    first = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = max(task.start, first), min(task.stop, first + n)
        if lo < hi:
            rows = pf.read_row_group(g).slice(lo - first, hi - lo).to_pylist()
            for i, row in enumerate(rows, start=lo):
                yield i + 1, row
        first += n
        if first >= task.stop:
            break

