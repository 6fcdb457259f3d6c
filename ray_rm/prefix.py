"""The one common-prefix rule, for token ids, characters or chat messages alike.

What this module is for: finding where the sequences of a group stop agreeing, which decides the
implicit prompt of a text or chat pair (``data/formats.py``), the prompt a packed group lays out once
(``data/tokenize.py``), and which served sequences share their prompt's computation (``scoring/grouping.py``).
What it must not do: interpret the items (tokens, characters, messages are compared with ``==``), or
import anything beyond the standard library.
"""
from __future__ import annotations

from typing import Sequence


def common_prefix_len(seqs: Sequence[Sequence], keep_own: int = 0) -> int:
    """Length of the longest prefix that all of ``seqs`` share, capped so every one keeps ``keep_own`` items.

    ``keep_own=1`` is the packing rule: each sequence keeps at least its last item (its reward token)
    outside the shared prefix. With fewer than two sequences the (capped) length of the one given."""
    if not seqs:
        return 0
    first = seqs[0]
    limit = max(0, min(len(s) for s in seqs) - keep_own)
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs[1:]):
        n += 1
    return n
