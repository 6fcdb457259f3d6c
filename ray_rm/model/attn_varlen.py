"""The CUDA varlen kernels a packed row can run on: torch's built-in varlen flash kernel and flash-attn.

It must not choose a backend or decide what a layer needs (``attention.py`` registers these kernels and
picks one); it only builds their cu_seqlens and calls them. Pure torch: imports neither Ray nor DeepSpeed.

  torch_varlen  CUDA, bf16/fp16: PyTorch's built-in varlen flash kernel (torch.nn.attention.varlen):
                no compile step, nothing to install. Its API changed between releases (is_causal ->
                window_size, enable_gqa, scale), so it is called through feature detection.
  flash_attn    CUDA, bf16/fp16: flash-attn's flash_attn_varlen_func, only when that package is installed
                (a source build of hours; never needed by default). Adds soft-capping and dropout.

Both take one call per row: prompt-shared suffixes get their prompt's keys gathered in front of their own
([prompt; suffix], separate q and k cu_seqlens) and the kernels' bottom-right causal alignment.
"""
from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the options type lives with the dispatcher, which imports these kernels
    from ray_rm.model.attention import LayerOptions


# ------------------------------------------------------------------------------------------ varlen indices
def varlen_indices(blocks: list, causal: bool, device) -> dict:
    """cu_seqlens for one varlen call; keys of prefixed blocks are [prompt span; own span]."""
    kv_parts, cu_q, cu_k = [], [0], [0]
    for b in blocks:
        if b.prefix_len:
            kv_parts.append(torch.arange(b.prefix_start, b.prefix_start + b.prefix_len))
        kv_parts.append(torch.arange(b.start, b.start + b.length))
        cu_q.append(cu_q[-1] + b.length)
        cu_k.append(cu_k[-1] + b.prefix_len + b.length)
    shared = any(b.prefix_len for b in blocks)
    pin = torch.device(device).type == "cuda"

    def put(t):  # pinned + non_blocking: building a plan never waits for the GPU queue to drain
        return (t.pin_memory() if pin else t).to(device, non_blocking=True)

    return {
        "kv_index": put(torch.cat(kv_parts)) if shared else None,
        "cu_q": put(torch.tensor(cu_q, dtype=torch.int32)),
        "cu_k": put(torch.tensor(cu_k, dtype=torch.int32)),
        "max_q": max(b.length for b in blocks),
        "max_k": max(b.length + b.prefix_len for b in blocks),
    }


def _flat(f: dict, q, k, v):
    """[1, H, T, D] -> [T, H, D] for q; keys/values gathered into the [prompt; suffix] layout."""
    qf, kf, vf = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)
    if f["kv_index"] is not None:
        kf, vf = kf[f["kv_index"]], vf[f["kv_index"]]
    return qf, kf, vf


def _window_size(causal: bool, window: int | None) -> tuple[int, int]:
    """Flash's inclusive (left, right) for transformers' window w (keys at distance < w)."""
    left = window - 1 if window else -1
    return left, (0 if causal else left)


# ------------------------------------------------------------------------------------------ torch varlen
@functools.lru_cache(maxsize=1)
def _torch_varlen_api():
    """(varlen_attn, its parameter names) or (None, reason)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as exc:
        return None, f"torch {torch.__version__} has no torch.nn.attention.varlen ({exc})"
    params = set(inspect.signature(varlen_attn).parameters)
    if "window_size" not in params and "is_causal" not in params:
        return None, f"torch {torch.__version__}'s varlen_attn takes neither window_size nor is_causal"
    return varlen_attn, params


def torch_varlen_unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    fn, info = _torch_varlen_api()
    return info if fn is None else None


def torch_varlen_honours() -> frozenset:
    fn, params = _torch_varlen_api()
    return frozenset({"window"}) if fn is not None and "window_size" in params else frozenset()


def torch_varlen_run(f, causal, q, k, v, scaling, opts: LayerOptions, training):
    fn, params = _torch_varlen_api()
    qf, kf, vf = _flat(f, q, k, v)
    kwargs = {}
    if qf.shape[1] != kf.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:  # an API without GQA: share each kv head explicitly (exact, at some memory cost)
            rep = qf.shape[1] // kf.shape[1]
            kf, vf = kf.repeat_interleave(rep, dim=1), vf.repeat_interleave(rep, dim=1)
    if "scale" in params:
        kwargs["scale"] = scaling
    else:  # the kernel's default scale is D^-0.5
        qf = qf * (scaling * qf.shape[-1] ** 0.5)
    if "window_size" in params:
        kwargs["window_size"] = _window_size(causal, opts.window)
    if "is_causal" in params:
        kwargs["is_causal"] = causal
    out = fn(qf, kf, vf, f["cu_q"], f["cu_k"], f["max_q"], f["max_k"], **kwargs)
    return out.transpose(0, 1).unsqueeze(0)


# ------------------------------------------------------------------------------------------ flash-attn
def flash_attn_unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "the flash-attn package is not installed (optional: pip install flash-attn, a CUDA source build)"
    return None


def flash_attn_run(f, causal, q, k, v, scaling, opts: LayerOptions, training):
    from flash_attn import flash_attn_varlen_func

    qf, kf, vf = _flat(f, q, k, v)
    out = flash_attn_varlen_func(qf, kf, vf, f["cu_q"], f["cu_k"], f["max_q"], f["max_k"],
                                 dropout_p=opts.dropout if training else 0.0, softmax_scale=scaling, causal=causal,
                                 window_size=_window_size(causal, opts.window), softcap=opts.softcap or 0.0)
    return out.transpose(0, 1).unsqueeze(0)


def flash_available() -> bool:
    return flash_attn_unavailable() is None
