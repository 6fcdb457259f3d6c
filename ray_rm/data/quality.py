"""Data-quality filters and the drop report: every row that does not reach training is counted by reason.

It must not parse rows (``formats.py``) or tokenize; it judges normalized examples and counts.

Reasons are stable strings so reports can be compared across runs:
  invalid:<field>   malformed row (the message names file, row and field)
  identical         two responses of a row are identical
  no_preference     every response is tied (nothing to learn)
  scores_disagree   score_chosen <= score_rejected while 'chosen' says otherwise
  too_short         a response is shorter than data.min_response_chars
  too_similar       responses' word-Jaccard similarity >= data.max_similarity
  over_length       a sequence exceeds data.max_length tokens (overlength=drop)
  over_budget       a whole pair/group exceeds data.pack_tokens (it would have to be split)
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ray_rm.data.formats import PreferenceExample

MAX_EXAMPLES_PER_REASON = 5
LOUD_FRACTION = 0.05  # above this share of rows dropped (or truncated), jobs end with a WARNING line
_WORD = re.compile(r"\w+")


@dataclass
class DropReport:
    """Rows read, rows kept and rows dropped by reason, with a few example messages per reason."""

    rows_read: int = 0
    rows_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def drop(self, reason: str, message: str) -> None:
        self.dropped[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < MAX_EXAMPLES_PER_REASON:
            bucket.append(message)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def merge(self, other: "DropReport") -> "DropReport":
        self.rows_read += other.rows_read
        self.rows_kept += other.rows_kept
        self.dropped.update(other.dropped)
        for reason, msgs in other.examples.items():
            bucket = self.examples.setdefault(reason, [])
            bucket.extend(msgs[: MAX_EXAMPLES_PER_REASON - len(bucket)])
        return self

    def to_dict(self) -> dict:
        return {"rows_read": self.rows_read, "rows_kept": self.rows_kept, "rows_dropped": self.rows_dropped,
                "dropped": dict(sorted(self.dropped.items())), "examples": self.examples}

    @classmethod
    def from_dict(cls, d: dict) -> "DropReport":
        return cls(d["rows_read"], d["rows_kept"], Counter(d["dropped"]), dict(d.get("examples", {})))

    def format(self) -> str:
        lines = [f"rows read {self.rows_read}, kept {self.rows_kept}, dropped {self.rows_dropped}"]
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {reason:<22} {n:>7}   e.g. {self.examples.get(reason, [''])[0][:110]}")
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def usage_line(label: str, report: DropReport, truncated: int = 0) -> str:
    """The line a job ends with: how many rows counted as given; a WARNING above ``LOUD_FRACTION``, so a
    result computed on a subset of the data (or on cut sequences) is never mistaken for the whole."""
    read = max(report.rows_read, 1)
    dropped, cut = report.rows_dropped / read, truncated / read
    text = f"{label}: {report.rows_kept} of {report.rows_read} rows used, {report.rows_dropped} dropped ({dropped:.1%})"
    if truncated:
        text += f", {truncated} left-truncated to the length limit ({cut:.1%})"
    if report.dropped:
        text += "; " + ", ".join(f"{reason} {n}" for reason, n in report.dropped.most_common(3))
    loud = dropped > LOUD_FRACTION or cut > LOUD_FRACTION
    return ("[ray_rm] WARNING " if loud else "[ray_rm] ") + text


def _response_text(r) -> str:
    return r if isinstance(r, str) else "\n".join(content for _, content in r)


def _jaccard(a: str, b: str) -> float:
    wa, wb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def quality_drop(ex: PreferenceExample, *, drop_identical: bool = True, drop_score_disagreement: bool = True,
                 min_response_chars: int = 0, max_similarity: float = 1.0) -> tuple[str, str] | None:
    """The (reason, message) for which this example should be dropped, or None to keep it."""
    where = ex.example_id
    if len(set(ex.ranks)) == 1:
        return "no_preference", f"{where}: all {len(ex.ranks)} responses are tied"
    texts = [_response_text(r) for r in ex.responses]
    if drop_identical and len(set(ex.responses)) < len(ex.responses):
        return "identical", f"{where}: two responses are identical"
    if drop_score_disagreement and ex.scores is not None and len(ex.responses) == 2 and ex.ranks == (0, 1):
        if ex.scores[0] <= ex.scores[1]:
            return "scores_disagree", (f"{where}: score_chosen {ex.scores[0]} <= score_rejected {ex.scores[1]}")
    if min_response_chars > 0:
        short = min(len(t.strip()) for t in texts)
        if short < min_response_chars:
            return "too_short", f"{where}: a response has {short} chars < {min_response_chars}"
    if max_similarity < 1.0:
        sim = max(_jaccard(texts[i], texts[j]) for i in range(len(texts)) for j in range(i + 1, len(texts)))
        if sim >= max_similarity:
            return "too_similar", f"{where}: responses are {sim:.2f} similar >= {max_similarity}"
    return None
