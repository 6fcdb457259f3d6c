"""The shape rules of the code base, checked with ``ast`` so they cannot rot: files <= 400 lines, functions
<= 60 lines in ray_rm/ and jobs/, every module opens with a docstring (or, in jobs/, a comment above the
--help docstring) saying what it must not do, and the pure core imports neither Ray nor DeepSpeed, not even
through another ray_rm module or a function-level import."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
PURE_CORE = ("ray_rm.data.formats", "ray_rm.data.packer", "ray_rm.packed", "ray_rm.losses", "ray_rm.data.tokenize",
             "ray_rm.prefix", "ray_rm.data.prepare", "ray_rm.model.batch", "ray_rm.model.attention",
             "ray_rm.model.attn_sdpa", "ray_rm.model.attn_varlen")
FORBIDDEN_IN_CORE = ("ray", "deepspeed")


def _sources() -> list[Path]:
    return sorted(p for d in ("ray_rm", "jobs") for p in (ROOT / d).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # ``from pkg import module``
    return names


def test_files_and_functions_are_short():
    too_long = []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, too_long


def test_every_module_says_what_it_must_not_do():
    silent = []
    for path in _sources():
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        opening = doc + "\n" + "".join(line for line in text.splitlines(keepends=True)[:3] if line.startswith("#"))
        if not any(w in opening.lower() for w in ("must not", "must hold no", "must stay pure", "never")):
            silent.append(str(path.relative_to(ROOT)))
    assert not silent, silent


def _local_closure(module: str, files: dict[str, Path]) -> dict[str, set[str]]:
    """ray_rm modules reachable from ``module`` by imports, each with its direct imports."""
    seen, todo = {}, [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in files:
            continue
        seen[name] = _imports(files[name])
        todo.extend(n for n in seen[name] if n.startswith("ray_rm"))
    return seen


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_imports_neither_ray_nor_deepspeed(module):
    files = {_module_name(p): p for p in _sources()}
    assert module in files
    closure = _local_closure(module, files)
    offenders = sorted(f"{m} imports {n}" for m, names in closure.items() for n in names
                       if n.split(".")[0] in FORBIDDEN_IN_CORE)
    assert not offenders, offenders


def test_checker_sees_violations(tmp_path):
    """The checks above can fail: a long function and a Ray import are both found by the same helpers."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "    import ray.train\n")
    (fn,) = [n for n in ast.walk(ast.parse(bad.read_text())) if isinstance(n, ast.FunctionDef)]
    assert fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    assert "ray.train" in _imports(bad)


def _pair_path_bench():
    """bench/pair_path.py as a module (bench/ is a folder of scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pair_path", ROOT / "bench" / "pair_path.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_call_tree_counts_a_call_back_as_a_return():
    """The counting can fail: a file entered from a second file is a return; a repeated edge is one move."""
    bench = _pair_path_bench()
    tree = bench.call_tree([("<entry>", "a.py"), ("a.py", "b.py"), ("a.py", "b.py"), ("b.py", "b.py")])
    assert (tree["moves"], tree["returns"]) == (2, 0)
    tree = bench.call_tree([("<entry>", "a.py"), ("a.py", "b.py"), ("b.py", "a.py"), ("a.py", "c.py")])
    assert tree["return_edges"] == ["b.py -> a.py"] and tree["num_files"] == 3


def test_a_pairs_path_from_jsonl_to_loss_is_a_call_tree(tmp_path, tiny_decoder_dir):
    """Issue 13: no file on a pair's path is called back into. The one known exception: an implicit-prompt
    pair enters prefix.py (the one common-prefix rule) from formats.py and from tokenize.py."""
    bench = _pair_path_bench()
    found = {}
    for name, pair in bench.PAIRS.items():
        data_file = tmp_path / f"{name}.jsonl"
        data_file.write_text(json.dumps(pair) + "\n")
        found[name] = bench.call_tree(bench.trace_one_pair(tiny_decoder_dir, str(data_file)))
    assert found["explicit_prompt"]["return_edges"] == []
    assert found["implicit_prompt"]["return_edges"] == ["data/tokenize.py -> prefix.py"]
    files = found["explicit_prompt"]["files"]
    assert files[0] == "data/pipeline.py" and files[-1] == "losses.py" and "model/attention.py" in files
