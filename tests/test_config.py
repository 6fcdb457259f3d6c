"""Typed configs: YAML + dotted overrides, strict keys and types, and a --help that documents every key."""
from __future__ import annotations

import dataclasses
import json
import typing

from dataclasses import dataclass

import pytest

from ray_rm.cli import parse_job_args, parse_job_config, run_job
from ray_rm.config import ConfigError, iter_keys, load_config
from ray_rm.config_schema import DataConfig, TrainJobConfig, opt, section
from ray_rm.errors import DataError


def leaf_fields(cls, prefix=""):
    """Every (dotted key, default) of a config tree, walked independently of ray_rm.config."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(leaf_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f"{prefix}{f.name}"] = (default, f.metadata.get("help", ""))
    return out


@pytest.fixture
def yaml_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("output_dir: runs/x\n"
                    "data:\n  pack_tokens: 2048\n  train_files: [a.jsonl, b.parquet]\n  share_prompt: false\n"
                    "train:\n  lr: 3.0e-5\n  seed: 7\n  loss: margin\n"
                    "model:\n  kind: decoder\n")
    return path


def test_defaults_come_from_the_dataclasses():
    cfg = load_config(TrainJobConfig)
    assert cfg == TrainJobConfig()
    assert cfg.data.pack_tokens == 4096 and cfg.data.train_files == ["builtin:verifiable"]
    assert cfg.data.max_length == 0  # auto: resolved from the model by ray_rm.data.pipeline.resolve_max_length


def test_yaml_and_dotted_overrides(yaml_file):
    cfg = load_config(TrainJobConfig, str(yaml_file),
                      ["train.lr=1e-5", "data.train_files=x.jsonl,y.jsonl", "train.num_workers=4",
                       "model.dtype=float32", "data.max_similarity=0.9", "data.shuffle=false"])
    assert cfg.output_dir == "runs/x"
    assert cfg.data.pack_tokens == 2048 and cfg.data.share_prompt is False
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)  # the override wins over the file
    assert cfg.train.seed == 7 and cfg.train.loss == "margin"
    assert cfg.data.train_files == ["x.jsonl", "y.jsonl"]
    assert cfg.train.num_workers == 4 and cfg.model.kind == "decoder" and cfg.model.dtype == "float32"
    assert cfg.data.max_similarity == 0.9 and cfg.data.shuffle is False
    # untouched keys keep their defaults
    assert cfg.data.max_length == DataConfig().max_length


def test_override_value_parsing():
    cfg = load_config(TrainJobConfig, None, ["train.lr=2", "train.run_name=123", "data.train_files=[a, b]",
                                             "train.head_lr=5e-4", "output_dir="])
    assert cfg.train.lr == 2.0 and isinstance(cfg.train.lr, float)  # ints are accepted for floats
    assert cfg.train.run_name == "123"  # numbers are accepted for strings
    assert cfg.data.train_files == ["a", "b"]
    assert cfg.train.head_lr == 5e-4
    assert cfg.output_dir == ""


@pytest.mark.parametrize("override, key, hint", [
    ("data.pack_token=10", "data.pack_token", "data.pack_tokens"),
    ("train.learning_rate=1e-5", "train.learning_rate", None),
    ("trian.lr=1e-5", "trian.lr", "train.lr"),
    ("data.pack_tokens.x=1", "data.pack_tokens.x", None),
])
def test_unknown_override_keys_are_rejected(override, key, hint):
    with pytest.raises(ConfigError) as info:
        load_config(TrainJobConfig, None, [override])
    message = str(info.value)
    assert f"unknown config key '{key}'" in message
    if hint:
        assert f"did you mean '{hint}'" in message


def test_unknown_yaml_keys_are_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  pack_tokns: 10\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'data.pack_tokns' \(did you mean 'data.pack_tokens'"):
        load_config(TrainJobConfig, str(path))
    path.write_text("datta:\n  pack_tokens: 10\n")
    with pytest.raises(ConfigError, match="unknown config key 'datta'"):
        load_config(TrainJobConfig, str(path))


@pytest.mark.parametrize("override, key, expected", [
    ("data.pack_tokens=many", "data.pack_tokens", "expects an integer"),
    ("data.pack_tokens=1.5", "data.pack_tokens", "expects an integer"),
    ("train.lr=fast", "train.lr", "expects a number"),
    ("train.lr=true", "train.lr", "expects a number"),
    ("train.lr=.nan", "train.lr", "expects a number, got NaN"),
    ("data.shuffle=maybe", "data.shuffle", "expects true/false"),
    ("data.shuffle=1", "data.shuffle", "expects true/false"),
    ("train.run_name=[a, b]", "train.run_name", "expects a string"),
    ("data.train_files={a: 1}", "data.train_files", "expects a list"),
])
def test_wrong_types_are_rejected_naming_the_key(override, key, expected):
    with pytest.raises(ConfigError) as info:
        load_config(TrainJobConfig, None, [override])
    assert f"config key '{key}' {expected}" in str(info.value)


def test_wrong_types_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  seed: forty-two\n")
    with pytest.raises(ConfigError, match="config key 'train.seed' expects an integer, got 'forty-two'"):
        load_config(TrainJobConfig, str(path))
    path.write_text("data: 5\n")
    with pytest.raises(ConfigError, match="config section 'data' must be a mapping"):
        load_config(TrainJobConfig, str(path))


def test_structural_mistakes():
    with pytest.raises(ConfigError, match="config key 'data' is a section"):
        load_config(TrainJobConfig, None, ["data=3"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(TrainJobConfig, None, ["train.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainJobConfig, "/nonexistent/job.yaml")


def test_yaml_file_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(TrainJobConfig, str(path))
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainJobConfig, str(path))


@dataclass
class Leaf:
    depth: int = opt(1, "how deep")
    tags: list = opt(["a"], "labels")


@dataclass
class Branch:
    leaf: Leaf = section(Leaf, "a nested section")
    ratio: float = opt(0.5, "a number")


@dataclass
class Root:
    name: str = opt("root", "a name")
    branch: Branch = section(Branch, "a section holding a section")


def test_nested_sections(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text("branch:\n  leaf:\n    depth: 3\n")
    cfg = load_config(Root, str(path), ["branch.leaf.tags=x,y", "branch.ratio=1"])
    assert cfg == Root("root", Branch(Leaf(3, ["x", "y"]), 1.0))
    assert Root().branch.leaf.tags == ["a"] and Root().branch.leaf.tags is not Leaf().tags  # no shared default
    with pytest.raises(ConfigError, match=r"unknown config key 'branch.leaf.dept' \(did you mean 'branch.leaf.depth'"):
        load_config(Root, None, ["branch.leaf.dept=2"])
    assert [k for k, *_ in iter_keys(Root)] == ["name", "branch.leaf.depth", "branch.leaf.tags", "branch.ratio"]


def test_iter_keys_matches_the_schema():
    assert {k: d for k, _, d, _ in iter_keys(TrainJobConfig)} == {k: v[0] for k, v in leaf_fields(TrainJobConfig).items()}


def test_help_lists_every_key_with_default_and_explanation(capsys):
    with pytest.raises(SystemExit) as info:
        parse_job_config(TrainJobConfig, ["--help"], "train a reward model")
    assert info.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for key, (default, help_text) in leaf_fields(TrainJobConfig).items():
        assert help_text, f"{key} has no explanation"
        line = next((ln for ln in lines if ln.split() and ln.split()[0] == key), None)
        assert line is not None, f"--help does not list {key}"
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        shown = shown if shown.isprintable() else repr(shown)
        assert f"= {shown}" in line and help_text[:30] in " ".join(out.split()), key


def test_cli_config_errors_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        parse_job_config(TrainJobConfig, ["data.pack_tokns=5"], "x")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.pack_tokns" in err and "data.pack_tokens" in err


def test_print_config_is_the_resolved_config(capsys, yaml_file):
    with pytest.raises(SystemExit) as info:
        parse_job_config(TrainJobConfig, ["--config", str(yaml_file), "--print-config", "train.seed=3"], "x")
    assert info.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["seed"] == 3 and printed["data"]["pack_tokens"] == 2048
    assert printed == dataclasses.asdict(load_config(TrainJobConfig, str(yaml_file), ["train.seed=3"]))


def test_job_options_give_back_swallowed_overrides():
    def add(parser):
        parser.add_argument("--data", nargs="+")

    cfg, args = parse_job_args(TrainJobConfig, ["--data", "a.jsonl", "b=c.jsonl", "data.pack_tokens=2048",
                                                "train.seed=5"], "x", add_arguments=add)
    assert args.data == ["a.jsonl", "b=c.jsonl"]
    assert cfg.data.pack_tokens == 2048 and cfg.train.seed == 5


def test_run_job_prints_user_errors_as_one_line(capsys):
    def main(argv):
        raise DataError("missing; a preference row needs 'chosen'", "x.jsonl", 3, "chosen")

    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(SystemExit) as info:
        run_job(main, [])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: x.jsonl, row 3, field 'chosen': missing; a preference row needs 'chosen'\n"
    # the job's stop handler is gone again: a caller in the same process (this test session) keeps its own
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("key, value", [("on_error", "rasie"), ("overlength", "truncate"), ("chat_template", "maybe")])
def test_word_choices_are_checked_while_loading_and_in_code_built_configs(key, value):
    from ray_rm.config import check_choices

    with pytest.raises(ConfigError, match=f"config key 'data.{key}' must be one of"):
        load_config(TrainJobConfig, None, [f"data.{key}={value}"])
    with pytest.raises(ConfigError, match=f"config key 'data.{key}' must be one of"):
        check_choices(TrainJobConfig(data=DataConfig(**{key: value})))


def test_registry_choices_follow_the_registry_and_show_in_help():
    from ray_rm.config import describe
    from ray_rm.losses import LOSSES

    with pytest.raises(ConfigError, match="config key 'train.loss' must be one of bt | logexp"):
        load_config(TrainJobConfig, None, ["train.loss=hinge"])
    with pytest.raises(ConfigError, match="'model.attn_implementation' must be one of .*flash_attention_2"):
        load_config(TrainJobConfig, None, ["model.attn_implementation=flash"])
    line = next(x for x in describe(TrainJobConfig).splitlines() if x.strip().startswith("train.loss "))
    assert all(name in line for name in LOSSES)
    assert "[one of" not in describe(TrainJobConfig).split("data.on_error")[1].splitlines()[0]  # help names them


def test_config_errors_are_user_errors():
    from ray_rm.errors import UserError

    assert issubclass(ConfigError, UserError)


def test_local_paths_become_absolute_and_other_sources_stay_as_written(tmp_path, monkeypatch):
    """Ray Train runs workers in another working directory, so load_config makes local paths absolute."""
    from ray_rm.eval.config import EvalJobConfig
    from ray_rm.relabel.config import RelabelJobConfig
    from ray_rm.serve.config import ServeJobConfig

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    (tmp_path / "rm").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainJobConfig, None, ["data.train_files=data/train.jsonl,builtin:verifiable,hf://a/b,data/*.jsonl",
                                             "data.eval_files=data", "model.name_or_path=rm"])
    assert cfg.data.train_files == [str(tmp_path / "data" / "train.jsonl"), "builtin:verifiable", "hf://a/b",
                                    "data/*.jsonl"]
    assert cfg.data.eval_files == [str(tmp_path / "data")] and cfg.model.name_or_path == str(tmp_path / "rm")
    assert load_config(TrainJobConfig, None, ["model.name_or_path=Qwen/Qwen2.5-0.5B"]).model.name_or_path == \
        "Qwen/Qwen2.5-0.5B"  # a hub id: nothing local by that name
    assert load_config(EvalJobConfig, None, ["eval.model_path=rm"]).eval.model_path == str(tmp_path / "rm")
    relabel = load_config(RelabelJobConfig, None, ["relabel.model_path=./rm", "relabel.input_files=data/train.jsonl"])
    assert (relabel.relabel.model_path, relabel.relabel.input_files) == (str(tmp_path / "rm"),
                                                                         [str(tmp_path / "data" / "train.jsonl")])
    serve = load_config(ServeJobConfig, None, ["serve.model_path=rm", "serve.ensemble_paths=rm,smollm2-135m-instruct"])
    assert serve.serve.model_path == str(tmp_path / "rm")
    assert serve.serve.ensemble_paths == [str(tmp_path / "rm"), "smollm2-135m-instruct"]
