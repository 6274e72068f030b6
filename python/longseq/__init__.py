"""longseq from Python: the library's mixers, block kinds and feed-forward kinds as torch.nn.Modules, and its fused
attention kernels as differentiable functions (docs/python.md).

A module's parameters and buffers are the C++ module's tensors themselves, not copies: parameters(), state_dict(),
load_state_dict(), optimizers, .to()/.double() and train()/eval() act on the C++ module. Its submodules mirror the
C++ module's tree, so state_dict() keys are the C++ names (those of longseq's checkpoints).
"""
import json
import os
import warnings

import torch
from torch import nn

from . import _build


def _check_torch():
    # _C and liblongseq link one LibTorch; loading them beside another (a wheel's torch with a build for Debian's)
    # aborts the process, so the mismatch is an ImportError before they load.
    lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    if lib != _build.torch_library:
        raise ImportError(f"this build of longseq is for torch {_build.torch_version} ({_build.torch_library}), but "
                          f"this python's torch {torch.__version__} loads {lib}: use a longseq built against it "
                          f"(docs/python.md)")


_check_torch()

from . import _C  # noqa: E402  (after the check)

__all__ = [
    "Mixer", "Block", "FeedForward", "mixers", "blocks", "ffns", "describe",
    "flash_attention", "exact_attention", "attention_reference", "flash_attention_unsupported_reasons",
    "banded_attention", "BlockSparseLayout", "block_sparse_attention", "block_sparse_unsupported_reasons",
    "causal_linear_attention", "causal_prefix_products", "causal_linear_attention_unsupported_reasons",
    "relative_attention", "relative_attention_unsupported_reasons",
]


def mixers():
    """The registered mixers' names, in the registry's order."""
    return [m["name"] for m in _C.mixers()]


def blocks():
    """The registered block kinds' names."""
    return [b["name"] for b in _C.blocks()]


def ffns():
    """The registered feed-forward kinds' names."""
    return [f["name"] for f in _C.ffns()]


def describe(name, registry="mixer"):
    """One registry entry (registry: mixer, block or ffn): its summary and its options (name, type, default as
    JSON, doc, choices)."""
    entries = {"mixer": _C.mixers, "block": _C.blocks, "ffn": _C.ffns}
    if registry not in entries:
        raise ValueError(f"registry must be one of {', '.join(entries)}, got {registry!r}")
    for entry in entries[registry]():
        if entry["name"] == name:
            return entry
    names = ", ".join(e["name"] for e in entries[registry]())
    raise ValueError(f"unknown {registry} {name!r}; registered: {names}")


def _warn_about_blas():
    # The program fixes OpenBLAS's core by re-executing itself (docs/performance.md); an imported module cannot,
    # because OpenBLAS reads OPENBLAS_CORETYPE once, as it loads.
    name, override, user_set = _C.blas_core()
    if override and not user_set:
        warnings.warn(f"OpenBLAS chose its {name} kernels for this CPU, several times slower than {override}: "
                      f"export OPENBLAS_CORETYPE={override} before starting Python", RuntimeWarning, stacklevel=3)


_warn_about_blas()


def _apply_in_place(module, fn):
    # .data assignment keeps the TensorImpl the C++ module holds (as torch::nn::Module::to does); nn.Module._apply
    # would put a new tensor into _buffers (and, where it cannot set .data, into _parameters), cutting the alias.
    with torch.no_grad():
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is None:
                    continue
                t.data = fn(t)
                if t.grad is not None:
                    t.grad.data = fn(t.grad)


def _refuse_replacing(module, name):
    if name in module.__dict__.get("_parameters", {}) or name in module.__dict__.get("_buffers", {}):
        raise AttributeError(f"{name!r} is a tensor of the C++ module and cannot be replaced from Python; change it in "
                             f"place (with torch.no_grad(): t.copy_(new)) or with load_state_dict")


class _Node(nn.Module):
    """A submodule of a C++ module: holds that submodule's own C++ parameters and buffers."""

    def _apply(self, fn, recurse=True):
        if recurse:
            for child in self.children():
                child._apply(fn)
        _apply_in_place(self, fn)
        return self

    def __setattr__(self, name, value):
        _refuse_replacing(self, name)
        super().__setattr__(name, value)

    def forward(self, *args, **kwargs):
        raise RuntimeError("a submodule of a longseq module runs only as part of its C++ module")


class _CppModule(_Node):
    """The root of a C++ module's tree (Mixer, Block, FeedForward)."""

    _kind = None
    _what = None

    def __init__(self, spec):
        super().__init__()
        spec = {k: v for k, v in spec.items() if v is not None}
        try:
            text = json.dumps(spec)
        except TypeError as e:
            raise TypeError(f"{self._what} {spec.get('name', spec.get('kind'))}: options must be JSON values "
                            f"(numbers, strings, booleans, lists, dicts): {e}") from None
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_cpp", _C.Handle(self._kind, text))
        nodes = {"": self}
        # C++ lists its modules parent first; each path component is one child's name (C++ refuses names with '.').
        for path, params, buffers in self._cpp.tree():
            if path not in nodes:
                parent, _, child = path.rpartition(".")
                nodes[path] = _Node()
                nodes[parent]._modules[child] = nodes[path]
            node = nodes[path]
            for name, t in params:
                node._parameters[name] = t
            for name, t in buffers:
                node._buffers[name] = t
        self.training = self._cpp.training

    def initial_state(self, batch):
        """A fresh streaming state for `batch` sequences (mixers and blocks that stream: KV cache, running sums,
        memory); pass it as forward(..., causal=True, state=s) chunk after chunk. Its `offset` is the position
        reached, `tensors()` what it holds, `reorder(index)` keeps rows as a beam search does."""
        return self._cpp.initial_state(batch)

    def train(self, mode=True):
        super().train(mode)
        self._cpp.train(mode)
        return self

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self._spec.items())

    @classmethod
    def _from_spec(cls, spec):
        module = cls.__new__(cls)
        _CppModule.__init__(module, spec)
        return module

    def __deepcopy__(self, memo):
        # A fresh C++ module from the same spec (without drawing from torch's generator) with this one's tensors.
        with torch.random.fork_rng(devices=[]):
            other = self._from_spec(self._spec)
        with torch.no_grad():
            for (_, mine), (_, theirs) in zip(self._cpp.named_parameters() + self._cpp.named_buffers(),
                                              other._cpp.named_parameters() + other._cpp.named_buffers()):
                theirs.data = mine.detach().clone()
                theirs.requires_grad_(mine.requires_grad)
        other.train(self.training)
        memo[id(self)] = other
        return other

    def __reduce__(self):
        return (_rebuild, (type(self), self._spec, self.state_dict(), self.training))


def _rebuild(cls, spec, state, training):
    with torch.random.fork_rng(devices=[]):
        module = cls._from_spec(spec)
    for name, t in list(module.state_dict(keep_vars=True).items()):
        t.data = state[name].clone()
    return module.train(training)


class Mixer(_CppModule):
    """A registered token mixer (longseq.mixers()): x [B, T, C] -> [B, T, C].

    options: the mixer's options (describe(name)), validated by its schema; unknown keys and bad values raise
    ValueError naming them. layer_index picks the entry of per-layer options.
    """

    _kind = _C.Kind.mixer
    _what = "mixer"

    def __init__(self, name, d_model, n_heads, options=None, layer_index=0):
        super().__init__({"name": name, "d_model": d_model, "n_heads": n_heads, "options": options,
                          "layer_index": layer_index})

    def forward(self, x, causal=False, padding_mask=None, global_mask=None, state=None):
        """x [B, T, C]; padding_mask / global_mask [B, T] bool (True = padding / a global token) or None; state:
        from initial_state, x then continues the sequence it holds (causal only)."""
        return self._cpp.forward(x, causal, padding_mask, global_mask, state)


class _WithAux(_CppModule):
    """A module whose feed-forward kind may report auxiliary losses and metrics (MoE's balancing loss, z-loss,
    dropped tokens), each the mean over the forwards since clear_aux()."""

    def aux_losses(self):
        """Weighted losses in the forwards' graph, by name: add them to the training loss."""
        return self._cpp.aux_losses()

    def aux_metrics(self):
        return self._cpp.aux_metrics()

    def clear_aux(self):
        self._cpp.clear_aux()


class Block(_WithAux):
    """One layer of a trunk, of a registered block kind (longseq.blocks()): x [B, T, C] -> [B, T, C].

    mixer: the layer's mixer for kinds that run one (standard, post_norm), as a name or {"name": ..., option: ...};
    ff: its feed-forward kind as a name or {"name": ..., option: ...} (None: dense). d_ff defaults to 4 d_model.
    """

    _kind = _C.Kind.block
    _what = "block"

    def __init__(self, kind, d_model, n_heads, d_ff=None, mixer=None, ff=None, options=None, dropout=0.0,
                 ff_activation="gelu", layer_index=0):
        super().__init__({"kind": kind, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff, "mixer": mixer,
                          "ff": ff, "options": options, "dropout": dropout, "ff_activation": ff_activation,
                          "layer_index": layer_index})

    def forward(self, x, causal=False, padding_mask=None, global_mask=None, state=None):
        return self._cpp.forward(x, causal, padding_mask, global_mask, state)

class FeedForward(_WithAux):
    """A registered feed-forward kind (longseq.ffns()): x [B, T, C] -> [B, T, C]. d_ff defaults to 4 d_model."""

    _kind = _C.Kind.ffn
    _what = "feed-forward"

    def __init__(self, kind, d_model, d_ff=None, options=None, dropout=0.0, activation="gelu", layer_index=0):
        super().__init__({"kind": kind, "d_model": d_model, "d_ff": d_ff, "options": options, "dropout": dropout,
                          "activation": activation, "layer_index": layer_index})

    def forward(self, x, padding_mask=None):
        """padding_mask [B, T] bool (True = padding: it takes no expert capacity) or None."""
        return self._cpp.forward(x, False, padding_mask, None)


# Kernels. q: [B, H, T, D]; k, v: [B, H, S, D]; key_padding: [B, S] bool (True = never attended) or None.
# kernel: "auto" (fused when it supports the input, else the reference), "fused" (ValueError listing the reasons
# when it does not) or "reference".

def exact_attention(q, k, v, causal=False, key_padding=None, kernel="auto"):
    """softmax(q k^T / sqrt(D)) v; causal: query t sees keys s <= t + S - T. Rows with no key give 0."""
    return _C.exact_attention(q, k, v, causal, key_padding, kernel)


def flash_attention(q, k, v, causal=False, key_padding=None):
    """The fused exact kernel (FlashAttention-2 on the CPU, float32): exact_attention with kernel="fused"."""
    return _C.exact_attention(q, k, v, causal, key_padding, "fused")


def attention_reference(q, k, v, causal=False, key_padding=None):
    """The composite-ATen oracle of the exact kernel (any dtype and device)."""
    return _C.exact_attention(q, k, v, causal, key_padding, "reference")


def flash_attention_unsupported_reasons(q, k, v, causal=False, key_padding=None):
    """Why the fused exact kernel cannot take these inputs; [] = it can."""
    return _C.flash_attention_unsupported_reasons(q, k, v, causal, key_padding)


def banded_attention(q, k, v, window, dilation=1, causal=False, key_padding=None, kernel="auto"):
    """Row i sees keys i + dilation * m, m in [-window, window] ([-window, 0] causal). -> (out, lse [B, H, T])."""
    return _C.banded_attention(q, k, v, window, dilation, causal, key_padding, kernel)


class BlockSparseLayout:
    """Which key blocks each query block sees: offsets [G_B, G_H, NQ + 1] and blocks [G_B, G_H, nnz], int64 (CSR;
    G_B in {1, B}, G_H in {1, H}); query block j of group g sees blocks[g][offsets[g][j]:offsets[g][j + 1]]."""

    def __init__(self, block_q, block_k, offsets, blocks):
        self.block_q, self.block_k, self.offsets, self.blocks = block_q, block_k, offsets, blocks

    @classmethod
    def from_rows(cls, block_q, block_k, rows):
        """rows[g_b][g_h][j]: the key blocks of query block j, as lists of ints."""
        return cls(block_q, block_k, *_C.block_sparse_layout(block_q, block_k, rows))


def block_sparse_attention(q, k, v, layout, causal=False, q_pos=None, k_pos=None, scale=None, self_penalty=0.0,
                           window=(-1, -1), kernel="auto"):
    """One softmax over the key blocks the layout lists per query block -> (out, lse). q_pos / k_pos: the rows'
    original positions [B|1, H|1, N] int64 (-1 = empty row / never attended), None = 0..N-1; scale defaults to
    1/sqrt(D); window = (left, right) bounds a band (-1 = none); self_penalty: Reformer's shared-QK self rule."""
    if scale is None:
        scale = q.size(-1) ** -0.5
    return _C.block_sparse_attention(q, k, v, layout.block_q, layout.block_k, layout.offsets, layout.blocks, scale,
                                     causal, q_pos, k_pos, self_penalty, window[0], window[1], kernel)


def block_sparse_unsupported_reasons(q, k, v, layout, causal=False, q_pos=None, k_pos=None, self_penalty=0.0,
                                     window=(-1, -1)):
    return _C.block_sparse_unsupported_reasons(q, k, v, layout.block_q, layout.block_k, layout.offsets,
                                               layout.blocks, causal, q_pos, k_pos, self_penalty, window[0],
                                               window[1])


def causal_linear_attention(a, b, v, chunk=64, eps=1e-6, kernel="auto"):
    """y_t = a_t^T S_t / (a_t^T z_t + eps), S_t = sum_{j<=t} b_j v_j^T, z_t = sum_{j<=t} b_j: a, b [B, H, T, M]
    (feature maps of queries and keys), v [B, H, T, E] -> [B, H, T, E]."""
    return _C.causal_linear_attention(a, b, v, chunk, eps, kernel)


def causal_prefix_products(a, b, v, chunk=64, kernel="auto"):
    """P_t = sum_{j<=t} (a_t . b_j) v_j, the numerator alone."""
    return _C.causal_prefix_products(a, b, v, chunk, kernel)


def causal_linear_attention_unsupported_reasons(a, b, v):
    return _C.causal_linear_attention_unsupported_reasons(a, b, v)


def relative_attention(qu, qv, k, v, r, memory=0, max_distance=-1, key_padding=None, kernel="auto"):
    """Transformer-XL's relative attention (Dai et al. 2019, sec. 3.3): the queries are the last T of K = M + T keys
    (M = memory rows); score_ij = (qu_i . k_j + qv_i . r[d]) / sqrt(D) for the distance d = M + i - j, visible iff
    0 <= d (<= max_distance when >= 0). qu = q + u, qv = q + v: [B, H, T, D]; k, v: [B, H, K, D]; r: [H, R >= K, D],
    row d for distance d. key_padding [B, K] (reference path only)."""
    return _C.relative_attention(qu, qv, k, v, r, memory, max_distance, key_padding, kernel)


def relative_attention_unsupported_reasons(qu, qv, k, v, r, memory=0, max_distance=-1, key_padding=None):
    return _C.relative_attention_unsupported_reasons(qu, qv, k, v, r, memory, max_distance, key_padding)
