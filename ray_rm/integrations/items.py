"""Chat messages from a trainer's rows as the scoring API takes them (shared by the trainer adapters).

Trainers' messages may carry extra keys (tool calls, reasoning, names) that ``/v1/score`` refuses; only
``role`` and ``content`` are the RM's input. Missing keys are left missing so the server names the problem.
Must not validate or template anything itself: ``serve.inputs`` and the server's tokenizer do.
"""
from __future__ import annotations


def chat_payload(messages) -> list:
    if hasattr(messages, "tolist"):  # verl keeps non-tensor columns as numpy object arrays
        messages = messages.tolist()
    return [{k: m[k] for k in ("role", "content") if k in m} if isinstance(m, dict) else m for m in messages]
