"""The bad-data corpus: every malformed input gives a clear error or a counted drop, never a crash.

``tests/data/bad/cases.json`` says, per file or folder, what must happen; one parametrized test runs
each case through ``process_task`` in strict (``data.on_error=raise``) and lenient (``drop``) mode:
  invalid     strict: DataError naming file, row and field; lenient: dropped as ``invalid:<field>``
  drop        a quality / length drop with its reason, the same in both modes
  file_error  a DataError naming the file in both modes (no row can be dropped from an unreadable file)
  ok          every row kept (edge cases that must be accepted)
A few cases also run through the Ray Data pipeline.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from ray_rm.config_schema import DataConfig
from ray_rm.data.prepare import process_task
from ray_rm.data.quality import DropReport
from ray_rm.data.sources import plan_read_tasks
from ray_rm.errors import DataError

DATA_DIR = Path(__file__).parent / "data"
MANIFEST = json.loads((DATA_DIR / "bad" / "cases.json").read_text())["cases"]
MODES = ("raise", "drop")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The committed cases plus the generated (binary / huge) ones, in one temporary folder."""
    sys.path.insert(0, str(DATA_DIR))
    try:
        import make_bad_corpus
    finally:
        sys.path.remove(str(DATA_DIR))
    root = tmp_path_factory.mktemp("corpus") / "bad"
    shutil.copytree(DATA_DIR / "bad", root)
    written = make_bad_corpus.build(root)
    (root / "generated.txt").write_text("\n".join(written))
    return root


@pytest.fixture(scope="module")
def encoder(smollm2_dir):
    from transformers import AutoTokenizer

    from ray_rm.data.tokenize import SequenceEncoder

    return SequenceEncoder(AutoTokenizer.from_pretrained(smollm2_dir))


def case_config(case: dict, mode: str) -> DataConfig:
    return DataConfig(on_error=mode, **case.get("config", {}))


def run_case(path: Path, cfg: DataConfig, encoder) -> tuple[list, DropReport]:
    groups, report = [], DropReport()
    for task in plan_read_tasks([str(path)], cfg.rows_per_read_task):
        g, rep = process_task(task, encoder, cfg, share_prompt=True)
        groups += g
        report.merge(rep)
    return groups, report


def test_manifest_covers_the_corpus(corpus):
    on_disk = {p.name for p in corpus.iterdir()} - {"cases.json", "generated.txt"}
    listed = {name for name, case in MANIFEST.items() if not case.get("absent")}
    assert on_disk == listed
    assert len(MANIFEST) >= 40
    assert {c["expect"] for c in MANIFEST.values()} == {"invalid", "drop", "file_error", "ok"}
    generated = {n.split("/")[0] for n in (corpus / "generated.txt").read_text().split()}
    for name, case in MANIFEST.items():
        assert case["why"], name
        assert (name in generated) == bool(case.get("generated")), name
        assert (DATA_DIR / "bad" / name).exists() or case.get("generated") or case.get("absent"), name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_bad_case(corpus, encoder, name, mode):
    case = MANIFEST[name]
    path = corpus / name
    cfg = case_config(case, mode)
    expect = case["expect"]
    if expect == "file_error" or (expect == "invalid" and mode == "raise"):
        with pytest.raises(DataError) as info:
            run_case(path, cfg, encoder)
        exc = info.value
        assert case["message"] in str(exc)
        if expect == "file_error":
            assert name in str(exc)  # the file (or folder) is named
            return
        source = case.get("source", name)
        assert Path(exc.source).name == source and exc.row == case["row"] and exc.field == case["field"]
        where = f"{source}, row {case['row']}" + (f", field '{case['field']}'" if case["field"] else "")
        assert where in str(exc)
        return

    groups, report = run_case(path, cfg, encoder)
    assert len(groups) == report.rows_kept == case["kept"]
    assert report.rows_read == report.rows_kept + report.rows_dropped
    if expect == "ok":
        assert report.rows_dropped == 0, report.format()
        return
    reason = case["reason"] if expect == "drop" else "invalid:" + (case["field"].split("[")[0] or "row")
    assert dict(report.dropped) == {reason: case["count"]}
    example = report.examples[reason][0]
    assert case["message"] in example
    assert case.get("source", name) in example
    if expect == "invalid":
        assert f"row {case['row']}" in example


def test_overlength_case_fits_before_templating(encoder):
    """The premise of 'overlength_after_template': the raw text fits max_length, the templated one does not."""
    case = MANIFEST["overlength_after_template.jsonl"]
    row = json.loads((DATA_DIR / "bad" / "overlength_after_template.jsonl").read_text().splitlines()[1])
    limit = case["config"]["max_length"]
    for key in ("chosen", "rejected"):
        messages = row["prompt"] + row[key]
        raw = encoder.tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
        templated = encoder.tokenizer.apply_chat_template(messages, tokenize=False)
        assert len(raw) < limit < len(encoder.tokenizer(templated, add_special_tokens=False)["input_ids"])


def test_huge_row_is_huge(corpus):
    lines = (corpus / "huge_row.jsonl").read_bytes().splitlines()
    assert len(lines[1]) > 1_000_000


# ------------------------------------------------------------------ the same through Ray Data
@pytest.mark.slow
def test_pipeline_lenient_matches_process_task(ray_local, corpus, encoder, smollm2_dir):
    from ray_rm.data.pipeline import PackSettings, materialize

    case = MANIFEST["mixed_dir"]
    cfg = case_config(case, "drop")
    prepared = materialize([str(corpus / "mixed_dir")], cfg, PackSettings(smollm2_dir, share_prompt=True, seed=3))
    groups, report = run_case(corpus / "mixed_dir", cfg, encoder)
    assert prepared.report.to_dict() == report.to_dict()
    assert prepared.report.dropped == {"invalid:chosen": case["count"]}
    assert prepared.num_groups == len(groups) == case["kept"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixed_dir", "non_utf8.jsonl"])
def test_pipeline_strict_raises_a_data_error(ray_local, corpus, smollm2_dir, name):
    """Strict mode on the cluster: the driver gets the one-line DataError, not a Ray traceback."""
    from ray_rm.data.pipeline import PackSettings, materialize

    case = MANIFEST[name]
    with pytest.raises(DataError) as info:
        materialize([str(corpus / name)], case_config(case, "raise"), PackSettings(smollm2_dir, share_prompt=True))
    message = str(info.value)
    field = f", field '{case['field']}'" if case["field"] else ""
    assert f"{case.get('source', name)}, row {case['row']}{field}: {case['message']}" in message
    assert "Traceback" not in message and "\n" not in message
