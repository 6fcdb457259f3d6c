"""Export self-test: does an exported checkpoint give ray_rm's reward to every consumer that loads it?

Runs at the end of every training job (examples from the training data) and on demand
(``python jobs/check_export.py PATH``, built-in examples covering plain text, prompt + response and
chat messages). Two families of checks, each failure naming the check, the item and the difference:

* tokens: each consumer's own call on the raw text must produce the reference sequence, i.e. the one
  ray_rm trained on (training) or scores (on demand):
    - ``transformers``: ``tokenizer(text)`` / ``tokenizer.apply_chat_template(messages, tokenize=True)``;
    - ``trl``: TRL's GRPO/PPO reward-model path, ``tokenizer(texts, add_special_tokens=False)`` on the
      plain or templated text;
    - ``vllm``: verl's discriminative-RM request to vLLM ``/classify``: templated text with a leading
      BOS string stripped, tokenized with vLLM's default ``add_special_tokens=True``.
  Two differences come from the base tokenizer, not the export, and are reported as notes with the
  reward difference they cause: TRL missing the BOS a BOS-adding tokenizer puts on plain text (TRL
  passes add_special_tokens=False), and vLLM adding that BOS in front of a template that does not write
  it. Any other difference fails (e.g. verl stripping a BOS the template wrote and vLLM does not add).
* rewards: plain ``AutoModelForSequenceClassification`` on the reference sequences, right and left
  padding (decoders), batch 1 and batch N, against ``RewardScorer`` (packed, ray_rm's own attention),
  both in fp32; a difference above ``TOLERANCE`` fails. Consumers whose tokens match inherit these
  (TRL pads right in a batch; vLLM runs each sequence unpadded, as batch 1 does).

This module must not fix anything it finds: it loads the folder as consumers do and reports.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

TOLERANCE = 1e-4
MAX_ITEM_TOKENS = 384  # keeps the check a few seconds long on CPU; longer training items are skipped


@dataclass
class CheckItem:
    """One scored sequence: ``prompt`` + ``response`` as ``PreferenceExample`` holds them (text, or tuples
    of (role, content) for chat)."""

    name: str
    prompt: object
    response: object


def builtin_items(tokenizer) -> list[CheckItem]:
    """Plain text, prompt/response, hh-style text, chat (single and multi-turn) and a text ending in EOS
    (the sequence pad == eos breaks)."""
    items = [
        CheckItem("text", "", "The capital of France is Paris."),
        CheckItem("prompt/response", "Question: what is 2 + 2?\nAnswer:", " 4"),
        CheckItem("hh text", "\n\nHuman: How do I boil an egg?\n\nAssistant:", " Put it in boiling water."),
        CheckItem("messages", (("user", "How do I boil an egg?"),), (("assistant", "Boil it for nine minutes."),)),
        CheckItem("multi-turn messages", (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"),
                                          ("user", "What is 2 + 2?")), (("assistant", "4"),)),
    ]
    if tokenizer.eos_token:
        items.append(CheckItem("text ending in EOS", "", "Done." + tokenizer.eos_token))
    return items


def items_from_files(files: list[str], data_cfg, examples: int = 3) -> list[CheckItem]:
    """Every response of the first ``examples`` readable rows of ``files`` (malformed rows are skipped)."""
    from ray_rm.data.prepare import read_examples
    from ray_rm.data.quality import DropReport
    from ray_rm.data.sources import plan_read_tasks

    items: list[CheckItem] = []
    for task in plan_read_tasks(files, examples * 4, examples * 4, data_cfg.builtin_size):
        for ex in read_examples(task, DropReport(), "drop"):
            items += [CheckItem(f"{ex.example_id}#{k}", ex.prompt, r) for k, r in enumerate(ex.responses)]
            examples -= 1
            if examples == 0:
                return items
    return items


@dataclass
class CheckReport:
    path: str
    items: int = 0
    failures: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    max_abs_diff: float = 0.0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"path": self.path, "passed": self.passed, "items": self.items, "max_abs_diff": self.max_abs_diff,
                "tolerance": TOLERANCE, "failures": self.failures, "notes": self.notes,
                "seconds": round(self.seconds, 2)}

    def format(self) -> str:
        head = (f"export check {'PASSED' if self.passed else 'FAILED'} for {self.path}: {self.items} items, "
                f"max |reward difference| {self.max_abs_diff:.2e} (tolerance {TOLERANCE:g})")
        return "\n".join([head] + [f"  FAIL {f}" for f in self.failures] + [f"  note {n}" for n in self.notes])


# ---------------------------------------------------------------------------------------------- consumers
def _ids(encoded) -> list[int]:
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return [int(t) for t in ids]


def consumer_sequences(tokenizer, encoder, item: CheckItem) -> dict[str, list[int]]:
    """Each consumer's token ids for ``item``, computed the way that consumer calls the tokenizer."""
    from ray_rm.data.tokenize import messages_to_dicts

    text, templated = encoder.render(item.prompt, item.response)
    if templated:
        messages = messages_to_dicts(tuple(item.prompt) + tuple(item.response))
        plain = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
        bos = tokenizer.bos_token
        stripped = text[len(bos):] if bos and text.startswith(bos) else text
        vllm = _ids(tokenizer(stripped, add_special_tokens=True))
    else:
        plain = vllm = _ids(tokenizer(text))
    return {"transformers": plain, "trl": _ids(tokenizer(text, add_special_tokens=False)), "vllm": vllm}


def _describe_difference(tokenizer, got: list[int], want: list[int]) -> str:
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (f"{len(got)} tokens vs {len(want)}; first difference at position {k}: "
            f"{tokenizer.decode(got[k:k + 3])!r} vs {tokenizer.decode(want[k:k + 3])!r}")


def _base_tokenizer_bos_gap(consumer: str, got: list[int], want: list[int], bos: int | None, adds: bool) -> bool:
    """TRL without the BOS this tokenizer adds, or vLLM adding it where the template has none."""
    if bos is None or not adds:
        return False
    return (consumer == "trl" and [bos] + got == want) or (consumer == "vllm" and got == [bos] + want)


# ---------------------------------------------------------------------------------------------- rewards
@torch.no_grad()
def _hf_outputs(clf, tokenizer, seqs: list[list[int]], side: str, batch: int) -> list[list[float]]:
    """Every logit per sequence (the reward; an attribute model's k attribute values)."""
    out: list[list[float]] = []
    for i in range(0, len(seqs), batch):
        enc = tokenizer.pad({"input_ids": seqs[i:i + batch]}, padding=True, padding_side=side, return_tensors="pt")
        out += clf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float().tolist()
    return out


def _hf_rewards(clf, tokenizer, seqs: list[list[int]], side: str, batch: int) -> list[float]:
    return [v[0] for v in _hf_outputs(clf, tokenizer, seqs, side, batch)]


def _compare(report: CheckReport, check: str, names: list[str], ours: list[list[float]],
             theirs: list[list[float]], labels: list[str]) -> None:
    for name, mine, other in zip(names, ours, theirs):
        for label, a, b in zip(labels, mine, other):
            diff = abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf
            report.max_abs_diff = max(report.max_abs_diff, diff)
            if diff > TOLERANCE:
                report.failures.append(f"{check}: item '{name}' {label} {b:.6f} vs ray_rm {a:.6f} "
                                       f"(difference {diff:.2e})")


def check_export(path: str | Path, items: list[CheckItem] | None = None,
                 reference: list[list[int]] | None = None) -> CheckReport:
    """Check the export at ``path``; ``reference`` holds the trained token ids of ``items`` (default:
    what ray_rm's scorer makes of them from the export's own tokenizer)."""
    from transformers import AutoModelForSequenceClassification

    from ray_rm.scoring import RewardScorer

    from ray_rm.scoring.steps import checkpoint_head

    if checkpoint_head(path) == "prm":  # per-step scores: AutoModelForTokenClassification (export_check_prm.py)
        from ray_rm.model.export_check_prm import check_prm_export

        return check_prm_export(path)
    start = time.perf_counter()
    report = CheckReport(str(path))
    scorer = RewardScorer(str(path), dtype="float32")
    tokenizer = scorer.tokenizer
    if scorer.meta.get("append_eos"):
        report.failures.append("config.json ray_rm.append_eos is true: this checkpoint was trained with EOS appended "
                               "to plain text (before the no-hidden-tokens contract), so consumers that tokenize "
                               "text the ordinary way read a different token; retrain, or append EOS yourself")
    items = items if items is not None else builtin_items(tokenizer)
    reference = reference if reference is not None else scorer.encode([(i.prompt, i.response) for i in items])
    kept = [(i, r) for i, r in zip(items, reference) if 0 < len(r) <= min(MAX_ITEM_TOKENS, scorer.max_length)]
    items, reference = [i for i, _ in kept], [r for _, r in kept]
    report.items = len(items)
    if not items:
        report.failures.append("no example fits the check's length limit")
        return report
    decoder = scorer.model.kind == "decoder"
    _check_pad(report, scorer, items, reference, decoder)
    clf = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    names = [i.name for i in items]
    outputs = scorer.score_output_ids(reference)  # the reward, or an attribute model's k attribute values
    labels = scorer.attribute_names or ["reward"]
    for side in ("right", "left") if decoder else ("right",):
        for batch in (1, len(items)):
            _compare(report, f"transformers {side} padding, batch {batch}", names, outputs,
                     _hf_outputs(clf, tokenizer, reference, side, batch), labels)
    ours = [v[0] for v in outputs]
    _check_consumers(report, tokenizer, scorer, clf, items, reference, ours, decoder)
    report.seconds = time.perf_counter() - start
    return report


def _check_pad(report: CheckReport, scorer, items, reference, decoder: bool) -> None:
    pad = scorer.model.config.pad_token_id
    if not decoder or pad is None:
        return
    for item, ids in zip(items, reference):
        if ids[-1] == pad:
            report.failures.append(f"pad_token_id {pad} is the reward token of item '{item.name}': transformers "
                                   "pools the last non-pad token, so consumers read the token before it")


def _check_consumers(report, tokenizer, scorer, clf, items, reference, ours, decoder: bool) -> None:
    from ray_rm.model.export import adds_bos

    bos = tokenizer.bos_token_id if decoder else None
    adds = decoder and adds_bos(tokenizer)
    for item, want, our in zip(items, reference, ours):
        for consumer, got in consumer_sequences(tokenizer, scorer.encoder, item).items():
            if got == want:
                continue
            if consumer == "trl" and not decoder:
                report.notes.append(f"trl: tokenizes with add_special_tokens=False, which drops [CLS]/[SEP]; TRL's "
                                    "reward-model path does not fit encoder reward models")
                continue
            where = f"{consumer}: item '{item.name}': {_describe_difference(tokenizer, got, want)}"
            if _base_tokenizer_bos_gap(consumer, got, want, bos, adds):
                theirs = _hf_rewards(clf, tokenizer, [got], "right", 1)[0]
                report.notes.append(f"{where} (a leading BOS; reward {theirs:.4f} vs {our:.4f}: see "
                                    "ray_rm_scoring.json for what this consumer must send)")
            else:
                report.failures.append(where)


def require_passed(report: CheckReport) -> None:
    """Raise ``ExportCheckError`` (a user-facing error) naming every failure."""
    from ray_rm.errors import ExportCheckError

    if not report.passed:
        raise ExportCheckError(report.format())
