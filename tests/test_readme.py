"""Every command in README.md is exercised by a test: cheap ones run here, the rest map to the test that
runs the same entry point (a README command without a mapping, or a mapping to a missing test, fails)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# README command (prefix) -> the test that runs that entry point the way the README shows it
COVERED_BY = {
    "make demo": "tests/test_demo.py::test_quick_demo_runs_every_stage",
    "make test": "tests/test_readme.py::test_make_targets_run_the_readme_test_commands",
    "python jobs/train_rm.py --config": "tests/test_readme.py::test_train_command_parses_config_and_overrides",
    "python jobs/train_rm.py --help": "tests/test_readme.py::test_job_help",
    "python jobs/train_rm.py model.head=attributes":
        "tests/test_attribute_train.py::test_mixed_rated_and_pair_rows_train_and_export_every_attribute",
    "python jobs/train_rm.py model.head=prm": "tests/test_prm_train_job.py::test_prm_trains_exports_and_evaluates",
    "python jobs/serve_rm.py": "tests/test_serve_job.py::test_serve_job_serves_with_token_and_stops_cleanly_on_sigterm",
    "python jobs/relabel_dpo.py": "tests/test_relabel.py::test_killed_job_resumes_to_identical_output",
    "python jobs/eval_rm.py": "tests/test_readme.py::test_eval_command_writes_report",
    "export RAY_AUTH_MODE=token": "tests/test_multinode.py::test_requests_without_the_token_are_refused",
    "ray job submit": "tests/test_multinode.py::test_train_job_spread_over_two_nodes",
    "python bench/train_throughput.py": "tests/test_bench_smoke.py::test_train_throughput_bench_runs",
    "python bench/serve_throughput.py": "tests/test_bench_smoke.py::test_serve_throughput_bench_runs",
    "python bench/relabel_throughput.py": "tests/test_bench_smoke.py::test_relabel_throughput_bench_runs",
    "python bench/sp_uneven_heads.py": "tests/test_bench_smoke.py::test_sp_uneven_heads_bench_runs",
    "python bench/ray_idle_floor.py": "tests/test_bench_smoke.py::test_ray_idle_floor_bench_runs",
    "python jobs/check_export.py": "tests/test_export_check.py::test_check_export_command",
    "python -m pytest -q -m slow": "tests/test_readme.py::test_make_targets_run_the_readme_test_commands",
    "python3 -m verl.trainer.main_ppo":
        "tests/test_integrations.py::test_verl_custom_reward_function_through_naive_reward_manager",
}


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def run(args, timeout=600, **env):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO), **env))


def test_every_readme_command_is_covered_by_an_existing_test():
    commands = readme_commands()
    assert len(commands) >= 10
    for cmd in commands:
        prefix = next((p for p in COVERED_BY if cmd.startswith(p)), None)
        assert prefix is not None, f"README command has no test: {cmd}"
        path, name = COVERED_BY[prefix].split("::")
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), flags=re.M), COVERED_BY[prefix]


def test_make_targets_run_the_readme_test_commands():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test:.*\n\t.*-m pytest -q$", makefile, flags=re.M)
    assert re.search(r'^test-fast:.*\n\t.*-m pytest -q -m "not slow"$', makefile, flags=re.M)
    assert re.search(r"^demo:.*\n\t.*jobs/demo.py$", makefile, flags=re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"slow:' in pyproject  # the marker the fast subset deselects
    assert "torch==2.13.0" in makefile  # the CPU build on this machine's disk


@pytest.mark.parametrize("job", ["train_rm", "serve_rm", "relabel_dpo", "eval_rm", "inspect_data", "demo",
                                 "check_export"])
def test_job_help(job):
    proc = run([sys.executable, f"jobs/{job}.py", "--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_train_command_parses_config_and_overrides(tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("data:\n  train_files: [a.jsonl]\ntrain:\n  lr: 2.0e-5\n")
    proc = run([sys.executable, "jobs/train_rm.py", "--config", str(cfg), "model.name_or_path=/models/x",
                "train.max_steps=20", "--print-config"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    resolved = json.loads(proc.stdout)
    assert resolved["model"]["name_or_path"] == "/models/x" and resolved["train"]["max_steps"] == 20
    assert resolved["train"]["lr"] == 2e-5 and resolved["data"]["train_files"] == ["a.jsonl"]
    bad = run([sys.executable, "jobs/train_rm.py", "train.lrr=1"], timeout=120)
    assert bad.returncode == 2 and "train.lr" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_eval_command_writes_report(exported_tiny_rm, tmp_path):
    import json

    out = tmp_path / "eval"
    proc = run([sys.executable, "jobs/eval_rm.py", f"eval.model_path={exported_tiny_rm}",
                "data.eval_files=builtin:verifiable-eval", "data.builtin_size=80", f"output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] == report["metrics"]["accuracy"] and report["metrics"]["num_pairs"] == 20
    assert (out / "report.html").exists()
