"""Peers' own source at test time: download a released wheel, load the exact functions/classes a test runs.

Nothing of the peers' code is committed. ``verl_wheel()`` fetches ``verl==0.9.1`` from PyPI with the
ordinary pip client into ``~/.cache/ray_rm/peers`` (once); without network the calling test skips with
the pip error as its reason. verl's package ``__init__`` imports GPU-era dependencies (tensordict,
omegaconf, ...), so ``load_defs`` compiles only the named top-level classes/functions of one of its
files, verbatim, into a namespace the test supplies (annotations are dropped so annotation-only names
need not exist; decorators listed in ``strip_decorators`` -- registries -- are dropped too).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

VERL_VERSION = "0.9.1"
CACHE = Path.home() / ".cache" / "ray_rm" / "peers"


def verl_wheel() -> Path:
    """The verl wheel (downloaded once); skips the calling test with a clear reason when PyPI is unreachable."""
    dest = CACHE / f"verl-{VERL_VERSION}"
    found = sorted(dest.glob(f"verl-{VERL_VERSION}-*.whl"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           f"verl=={VERL_VERSION}", "-d", str(dest)], capture_output=True, text=True, timeout=300)
    found = sorted(dest.glob(f"verl-{VERL_VERSION}-*.whl"))
    if proc.returncode != 0 or not found:
        why = (f"cannot download verl=={VERL_VERSION} from PyPI to test against its own client code: "
               f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        if os.environ.get("RAY_RM_REQUIRE_PEER_SOURCES"):  # CI sets it: there PyPI is reachable, so fail, never skip
            pytest.fail(why)
        pytest.skip(why)
    return found[0]


def read_source(wheel: Path, path: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(path).decode("utf-8")


class _Strip(ast.NodeTransformer):
    def __init__(self, decorators: set):
        self.decorators = decorators

    def _function(self, node):
        for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
            a.annotation = None
        for a in (node.args.vararg, node.args.kwarg):
            if a is not None:
                a.annotation = None
        node.returns = None
        self._decorators(node)
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_AnnAssign(self, node):  # class-level "x: T = v" -> "x = v" (or nothing)
        if node.value is None:
            return None
        return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)

    def visit_ClassDef(self, node):
        self._decorators(node)
        self.generic_visit(node)
        return node

    def _decorators(self, node):
        def name(d):
            d = d.func if isinstance(d, ast.Call) else d
            return d.id if isinstance(d, ast.Name) else getattr(d, "attr", "")
        node.decorator_list = [d for d in node.decorator_list if name(d) not in self.decorators]


def load_defs(source: str, names: list[str], namespace: dict, filename: str,
              strip_decorators: tuple = ()) -> dict:
    """Exec the named top-level defs of ``source`` (in file order) into ``namespace``; returns it."""
    tree = ast.parse(source, filename)
    wanted = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
              and n.name in names]
    missing = set(names) - {n.name for n in wanted}
    assert not missing, f"{filename} has no {sorted(missing)}: the peer's code changed"
    module = ast.fix_missing_locations(_Strip(set(strip_decorators)).visit(ast.Module(wanted, [])))
    namespace.setdefault("__name__", f"peer:{filename}")
    exec(compile(module, filename, "exec"), namespace)  # noqa: S102 - the peer's released code, by design
    return namespace


def load_module_file(wheel: Path, path: str, name: str):
    """Import one stdlib-only module file of the wheel as a standalone module (no package ``__init__``)."""
    out = CACHE / f"src-{wheel.stem}" / path
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(read_source(wheel, path))
    spec = importlib.util.spec_from_file_location(name, out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PeerBatch:
    """The slice of verl's ``DataProto`` its reward code touches: ``len``, ``[i]``, ``[a:b]``, ``.batch``,
    ``.non_tensor_batch``. The real class needs tensordict (a compiled package pinned to torch versions)."""

    def __init__(self, rows: list):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        return PeerBatch(self.rows[key]) if isinstance(key, slice) else self.rows[key]


class PeerRow:
    def __init__(self, batch: dict, non_tensor_batch: dict):
        self.batch, self.non_tensor_batch = batch, non_tensor_batch


def verl_row(policy_tokenizer, prompt_messages: list, response: str, extra: dict | None = None,
             pad_to: int = 8):
    """One rollout as verl stores it: right-padded response ids + attention mask, raw prompt messages."""
    import torch

    ids = policy_tokenizer(response, add_special_tokens=False)["input_ids"] + [policy_tokenizer.eos_token_id]
    pad = max(0, pad_to - len(ids))
    prompt = policy_tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = policy_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    batch = {"prompts": torch.tensor(prompt_ids), "responses": torch.tensor(ids + [0] * pad),
             "attention_mask": torch.tensor([1] * len(prompt_ids) + [1] * len(ids) + [0] * pad)}
    non_tensor = {"raw_prompt": list(prompt_messages), "data_source": "ray_rm_test",
                  "reward_model": {"ground_truth": None}, "extra_info": dict(extra or {})}
    return PeerRow(batch, non_tensor)


class AttrDict(dict):
    """``omegaconf.DictConfig``'s attribute access over plain dicts (verl reads its config both ways)."""

    def __getattr__(self, key):
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return AttrDict(value) if isinstance(value, dict) and not isinstance(value, AttrDict) else value
