"""Shared by the Python tests: the normalized error metric and the oracles written with plain torch ops."""
import math

import torch


def rel_error(got, want):
    """max |got - want| / max |want|: one number per tensor, as the C++ kernel tests measure (ggml's habit)."""
    got, want = got.detach().double(), want.detach().double()
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / (scale if scale > 0 else 1.0)


def attention_oracle(q, k, v, allowed, scale=None):
    """softmax over the allowed keys, [B|1, H|1, T, S] bool; rows with no key give 0 and lse -inf. -> (out, lse)."""
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    p = torch.exp(logits - lse.clamp_min(-1e30).unsqueeze(-1)).masked_fill(~allowed, 0.0)
    return p @ v, lse


def exact_allowed(T, S, causal, key_padding=None):
    """The exact kernel's mask: query t sees key s <= t + S - T when causal, and no padded key. -> [B|1, 1, T, S]."""
    t = torch.arange(T).unsqueeze(1)
    s = torch.arange(S).unsqueeze(0)
    allowed = (s <= t + (S - T)) if causal else torch.ones(T, S, dtype=torch.bool)
    allowed = allowed.view(1, 1, T, S)
    if key_padding is not None:
        allowed = allowed & ~key_padding.view(key_padding.size(0), 1, 1, S)
    return allowed


def lse_error(got, want):
    """rel_error over the rows that see a key; the others must be -inf in both."""
    finite = want.isfinite()
    if not torch.equal(got.isfinite(), finite) or (got[~finite] != float("-inf")).any():
        return float("inf")
    return rel_error(got[finite], want[finite])


def grads(out, inputs, grad_out, keep=False):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True, retain_graph=keep)
