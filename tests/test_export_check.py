"""The exported reward is ray_rm's reward for every consumer, and the export self-test catches broken exports.

References are written out here the way each consumer calls the checkpoint (not taken from export_check):
  * plain transformers: ``tokenizer(text)`` / ``tokenizer.apply_chat_template(messages, tokenize=True)``,
    ``AutoModelForSequenceClassification(...).logits[:, 0]``;
  * TRL's GRPO/PPO reward-model path: the plain or templated texts, ``add_special_tokens=False``, right
    padding, one padded batch;
  * verl -> vLLM ``/classify``: templated text with a leading BOS string stripped, tokenized with vLLM's
    default ``add_special_tokens=True``, each sequence alone (no padding).
ray_rm's side is ``RewardScorer.score`` (packed, ray_rm's own attention: the path training, serve,
relabel and eval use).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ray_rm.model.export_check import CheckItem, check_export, require_passed
from ray_rm.errors import ExportCheckError

TEXTS = [("", "The capital of France is Paris."), ("Question: what is 2 + 2?\nAnswer:", " 4"),
         ("\n\nHuman: How do I boil an egg?\n\nAssistant:", " Put it in boiling water for nine minutes.")]
CHATS = [[{"role": "user", "content": "How do I boil an egg?"}, {"role": "assistant", "content": "Boil it."}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"},
          {"role": "assistant", "content": "4"}]]


def _as_item(messages: list[dict]) -> tuple:
    turns = tuple((m["role"], m["content"]) for m in messages)
    return turns[:-1], turns[-1:]


def export_tiny(model_dir: str, out: Path) -> str:
    from ray_rm.config_schema import ModelConfig
    from ray_rm.model.build import build_reward_model
    from ray_rm.model.export import export_hf

    model = build_reward_model(ModelConfig(name_or_path=model_dir), seed=5)
    with torch.no_grad():  # a head with some spread, so a wrong token shows up as a different reward
        model.head.weight.normal_(0.0, 0.5)
    export_hf(model, model_dir, out, {"chat_template": "auto", "max_length": 1024, "reward_mean": 0.0,
                                      "reward_std": 1.0})
    return str(out)


@pytest.fixture(scope="module")
def bos_model_dir(tmp_path_factory, tiny_decoder_dir) -> str:
    """The tiny decoder with a Llama-3-style tokenizer: it adds BOS to plain text and its chat template
    writes ``{{ bos_token }}`` (so a naive add_special_tokens=True on templated text doubles BOS)."""
    from tokenizers import processors
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("bos_model")
    AutoModelForCausalLM.from_pretrained(tiny_decoder_dir).save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    bos = "<|endoftext|>"
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    tok.bos_token = bos
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module", params=["smollm2_tokenizer", "bos_adding_tokenizer"])
def exported(request, tmp_path_factory, tiny_decoder_dir, bos_model_dir) -> str:
    model_dir = tiny_decoder_dir if request.param == "smollm2_tokenizer" else bos_model_dir
    return export_tiny(model_dir, tmp_path_factory.mktemp(request.param) / "hf")


def _load(path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return (AutoTokenizer.from_pretrained(path),
            AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval())


@torch.no_grad()
def _logits(clf, batch) -> list[float]:
    return clf(**batch).logits[:, 0].tolist()


def _ours(path) -> tuple[list[float], list[float], object]:
    from ray_rm.scoring import RewardScorer

    scorer = RewardScorer(path, dtype="float32")
    return scorer.score(TEXTS), scorer.score([_as_item(m) for m in CHATS]), scorer


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def test_plain_transformers_gets_ray_rm_rewards(exported):
    tok, clf = _load(exported)
    ours_text, ours_chat, _ = _ours(exported)
    plain = [_logits(clf, tok(p + r, return_tensors="pt"))[0] for p, r in TEXTS]
    chats = [_logits(clf, tok.apply_chat_template(m, tokenize=True, return_dict=True, return_tensors="pt"))[0]
             for m in CHATS]
    assert _close(plain, ours_text) and _close(chats, ours_chat)
    # a padded batch (right and left) changes nothing: the pad token is never a reward token
    for side in ("right", "left"):
        batch = tok([p + r for p, r in TEXTS], padding=True, padding_side=side, return_tensors="pt")
        assert _close(_logits(clf, batch), ours_text), side


def test_trl_reward_model_path_gets_ray_rm_rewards(exported):
    tok, clf = _load(exported)
    ours_text, ours_chat, _ = _ours(exported)
    texts = [tok.apply_chat_template(m, tokenize=False) for m in CHATS]  # TRL's apply_chat_template(...)["text"]
    inputs = tok(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    assert _close(_logits(clf, inputs), ours_chat)
    plain = tok([p + r for p, r in TEXTS], return_tensors="pt", padding=True, padding_side="right",
                add_special_tokens=False)
    theirs = _logits(clf, plain)
    if tok("a")["input_ids"][0] == tok.bos_token_id:  # TRL drops the BOS this tokenizer adds to plain text
        assert not _close(theirs, ours_text)
        report = check_export(exported)
        assert report.passed and any(n.startswith("trl: item 'text'") and "leading BOS" in n for n in report.notes)
    else:
        assert _close(theirs, ours_text)


def test_verl_vllm_classify_path_gets_ray_rm_rewards(exported):
    tok, clf = _load(exported)
    ours_text, ours_chat, scorer = _ours(exported)
    theirs = []
    for m in CHATS:
        prompt = tok.apply_chat_template(m, tokenize=False)
        if tok.bos_token is not None and prompt.startswith(tok.bos_token):  # verl's BOS strip
            prompt = prompt[len(tok.bos_token):]
        theirs.append(_logits(clf, tok(prompt, return_tensors="pt"))[0])  # vLLM: add_special_tokens=True
    assert _close(theirs, ours_chat)
    assert _close([_logits(clf, tok(p + r, return_tensors="pt"))[0] for p, r in TEXTS], ours_text)
    # ray_rm's own chat sequence has exactly the template's tokens: one BOS at most, never two
    ids = scorer.encode([_as_item(CHATS[0])])[0]
    assert ids == tok.apply_chat_template(CHATS[0], tokenize=True)["input_ids"]
    if tok.bos_token_id is not None:
        assert ids[:2].count(tok.bos_token_id) <= 1


def test_self_test_passes_on_every_input_form(exported):
    report = check_export(exported)
    assert report.passed, report.format()
    assert report.items == 6 and report.max_abs_diff < 1e-4
    require_passed(report)
    notes = json.loads((Path(exported) / "ray_rm_scoring.json").read_text())
    assert "apply_chat_template" in notes["chat"] and "tokenizer(text)" in notes["text"]


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _broken_copy(exported: str, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "broken"
    shutil.copytree(exported, out)
    return out


@pytest.fixture
def smollm2_export(tmp_path, tiny_decoder_dir) -> str:
    return export_tiny(tiny_decoder_dir, tmp_path / "hf")


def test_self_test_fails_when_pad_is_the_reward_token(smollm2_export, tmp_path):
    broken = _broken_copy(smollm2_export, tmp_path)
    _edit_json(broken / "config.json", lambda c: c.update(pad_token_id=c["eos_token_id"]))  # pad == eos
    report = check_export(broken)
    assert not report.passed
    assert any("pad_token_id 2 is the reward token of item 'text ending in EOS'" in f for f in report.failures)
    assert any(f.startswith("transformers right padding, batch 6: item 'text ending in EOS'")
               for f in report.failures), report.format()
    with pytest.raises(ExportCheckError, match="text ending in EOS"):
        require_passed(report)


def test_self_test_fails_when_the_tokenizer_appends_a_token(smollm2_export, tmp_path):
    broken = _broken_copy(smollm2_export, tmp_path)
    _edit_json(broken / "tokenizer.json", lambda t: t.update(post_processor={
        "type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}},
                                                 {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_end|>": {"id": "<|im_end|>", "ids": [2], "tokens": ["<|im_end|>"]}}}))
    report = check_export(broken)
    assert not report.passed
    assert any(f.startswith("trl: item 'text'") for f in report.failures), report.format()
    assert any(f.startswith("vllm: item 'messages'") for f in report.failures), report.format()


def test_self_test_against_training_tokens_fails_when_the_export_tokenizer_drifted(smollm2_export, tmp_path):
    """At the end of training the reference is what training tokenized; a tokenizer that now appends EOS
    makes the plain transformers call itself disagree."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_export)
    items = [CheckItem("hh", *TEXTS[2])]
    trained = [tok(TEXTS[2][0] + TEXTS[2][1])["input_ids"]]
    assert check_export(smollm2_export, items, trained).passed
    drifted = [trained[0] + [tok.eos_token_id]]  # e.g. trained with EOS appended, exported without
    report = check_export(smollm2_export, items, drifted)
    assert any(f.startswith("transformers: item 'hh'") for f in report.failures), report.format()


def test_legacy_append_eos_checkpoint_is_flagged(smollm2_export, tmp_path):
    broken = _broken_copy(smollm2_export, tmp_path)
    _edit_json(broken / "config.json", lambda c: c["ray_rm"].update(append_eos=True, format_version=1))
    report = check_export(broken)
    assert any("ray_rm.append_eos is true" in f for f in report.failures)
    assert any(f.startswith("transformers: item 'text'") for f in report.failures)  # the EOS is hidden


def test_template_only_bos_is_undeclared_so_verl_does_not_strip_it(smollm2_export, tmp_path):
    """SmolLM2 declares <|im_start|> as BOS but never adds it; its template writes it. Declared, verl's BOS
    strip would remove the template's first token; the export undeclares it, and the check catches it."""
    config = json.loads((Path(smollm2_export) / "config.json").read_text())
    assert config["ray_rm"]["bos_token_undeclared"] == "<|im_start|>"
    broken = _broken_copy(smollm2_export, tmp_path)
    _edit_json(broken / "tokenizer_config.json", lambda t: t.update(bos_token="<|im_start|>"))
    report = check_export(broken)
    assert any(f.startswith("vllm: item 'messages'") for f in report.failures), report.format()


@pytest.mark.slow
def test_check_export_command(smollm2_export, tmp_path):
    """``python jobs/check_export.py PATH`` exits 0 on a good export and 2 on a broken one, naming the item."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    ok = subprocess.run([sys.executable, "jobs/check_export.py", smollm2_export, "--json"], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["passed"] is True
    broken = _broken_copy(smollm2_export, tmp_path)
    _edit_json(broken / "config.json", lambda c: c.update(pad_token_id=c["eos_token_id"]))
    bad = subprocess.run([sys.executable, "jobs/check_export.py", str(broken)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "export check FAILED" in bad.stderr and "'text ending in EOS'" in bad.stderr
