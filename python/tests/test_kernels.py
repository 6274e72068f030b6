"""The fused kernels called from PyTorch: forward and gradients (through their C++ autograd functions) against
attention written here with plain torch ops in float64, and their reasons for declining an input."""
import unittest

import torch

import longseq
from helpers import attention_oracle, exact_allowed, grads, lse_error, rel_error

FWD_TOL = 2e-5   # the C++ kernels' stated tolerance (kFlashAttentionTolerance and its siblings)
GRAD_TOL = 2e-4  # gradients within 10x that


def qkv(B, H, T, S, D, dtype=torch.float32):
    return [torch.randn(B, H, n, D, dtype=dtype, requires_grad=True) for n in (T, S, S)]


class FlashAttention(unittest.TestCase):
    def compare(self, B, H, T, S, D, causal, padded):
        q, k, v = qkv(B, H, T, S, D)
        pad = None
        if padded:
            pad = torch.zeros(B, S, dtype=torch.bool)
            pad[0, S - S // 3:] = True
        out = longseq.flash_attention(q, k, v, causal, pad)
        self.assertIsNotNone(out.grad_fn)
        g = torch.randn_like(out)
        got = grads(out, (q, k, v), g)
        q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
        want_out, _ = attention_oracle(q64, k64, v64, exact_allowed(T, S, causal, pad))
        want = grads(want_out, (q64, k64, v64), g.double())
        where = f"B={B} H={H} T={T} S={S} D={D} causal={causal} padded={padded}"
        self.assertLess(rel_error(out, want_out), FWD_TOL, where)
        for name, a, b in zip("qkv", got, want):
            self.assertLess(rel_error(a, b), GRAD_TOL, f"{where}: d{name}")

    def test_against_torch_attention(self):
        for B, H, T, S, D in ((2, 3, 37, 37, 16), (1, 2, 130, 130, 64), (2, 1, 20, 45, 32)):
            for causal in (False, True):
                for padded in (False, True):
                    with self.subTest(B=B, H=H, T=T, S=S, D=D, causal=causal, padded=padded):
                        self.compare(B, H, T, S, D, causal, padded)

    def test_auto_and_reference_paths(self):
        q, k, v = qkv(1, 2, 19, 19, 8)
        fused = longseq.exact_attention(q, k, v, True)
        ref = longseq.attention_reference(q, k, v, True)
        self.assertLess(rel_error(fused, ref), FWD_TOL)
        q, k, v = qkv(1, 2, 6, 6, 4, torch.float64)  # the reference in double: finite differences apply
        self.assertTrue(torch.autograd.gradcheck(lambda *t: longseq.exact_attention(*t, causal=True), (q, k, v)))

    def test_declines_with_reasons(self):
        q, k, v = qkv(1, 1, 8, 8, 4, torch.float64)
        self.assertIn("dtype is not float32", longseq.flash_attention_unsupported_reasons(q, k, v))
        with self.assertRaisesRegex(ValueError, "dtype is not float32"):
            longseq.flash_attention(q, k, v)
        self.assertEqual(longseq.exact_attention(q, k, v).dtype, torch.float64)  # auto falls back
        q, k, v = qkv(1, 1, 8, 4, 4)
        self.assertIn("causal with fewer keys than queries",
                      longseq.flash_attention_unsupported_reasons(q, k, v, causal=True))
        self.assertEqual(longseq.flash_attention_unsupported_reasons(q, k, v), [])
        with self.assertRaisesRegex(ValueError, "kernel must be auto, fused or reference"):
            longseq.exact_attention(q, k, v, kernel="fast")
        with self.assertRaisesRegex(RuntimeError, "key_padding must be") as e:
            longseq.flash_attention(q, k, v, key_padding=torch.zeros(1, 3, dtype=torch.bool))
        self.assertNotIn("Exception raised from", str(e.exception))  # LibTorch's message without the C++ backtrace


def band_allowed(T, window, dilation, causal, key_padding):
    t = torch.arange(T).unsqueeze(1)
    s = torch.arange(T).unsqueeze(0)
    d = s - t
    allowed = (d % dilation == 0) & (d.abs() <= window * dilation)
    if causal:
        allowed &= d <= 0
    allowed = allowed.view(1, 1, T, T)
    if key_padding is not None:
        allowed = allowed & ~key_padding.view(-1, 1, 1, T)
    return allowed


class BandedAttention(unittest.TestCase):
    def test_against_torch_attention(self):
        B, H, T, D = 2, 2, 41, 16
        pad = torch.zeros(B, T, dtype=torch.bool)
        pad[1, 30:] = True
        for window, dilation, causal in ((3, 1, False), (4, 1, True), (2, 3, False), (5, 2, True)):
            with self.subTest(window=window, dilation=dilation, causal=causal):
                q, k, v = qkv(B, H, T, T, D)
                out, lse = longseq.banded_attention(q, k, v, window, dilation, causal, pad, kernel="fused")
                g, gl = torch.randn_like(out), torch.randn_like(lse)
                got = grads([out, lse], (q, k, v), [g, gl])
                q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
                want_out, want_lse = attention_oracle(q64, k64, v64, band_allowed(T, window, dilation, causal, pad))
                want = grads([want_out, want_lse], (q64, k64, v64), [g.double(), gl.double()])
                self.assertLess(rel_error(out, want_out), FWD_TOL)
                self.assertLess(lse_error(lse, want_lse), FWD_TOL)
                for name, a, b in zip("qkv", got, want):
                    self.assertLess(rel_error(a, b), GRAD_TOL, f"d{name}")

    def test_bad_band(self):
        q, k, v = qkv(1, 1, 8, 8, 4)
        with self.assertRaisesRegex(ValueError, "window must be >= 0 and dilation >= 1"):
            longseq.banded_attention(q, k, v, window=2, dilation=0)


class BlockSparseAttention(unittest.TestCase):
    def test_against_torch_attention(self):
        B, H, T, D, bq, bk = 1, 2, 22, 8, 4, 3
        nq, nk = -(-T // bq), -(-T // bk)
        gen = torch.Generator().manual_seed(5)
        rows = [[[sorted(torch.randperm(nk, generator=gen)[:3].tolist()) for _ in range(nq)]]]
        layout = longseq.BlockSparseLayout.from_rows(bq, bk, rows)
        listed = torch.zeros(T, T, dtype=torch.bool)
        for j, blocks in enumerate(rows[0][0]):
            for b in blocks:
                listed[j * bq:(j + 1) * bq, b * bk:(b + 1) * bk] = True
        for causal in (False, True):
            with self.subTest(causal=causal):
                q, k, v = qkv(B, H, T, T, D)
                self.assertEqual(longseq.block_sparse_unsupported_reasons(q, k, v, layout, causal), [])
                out, lse = longseq.block_sparse_attention(q, k, v, layout, causal=causal, kernel="fused")
                g = torch.randn_like(out)
                got = grads(out, (q, k, v), g)
                allowed = listed & (torch.ones(T, T).tril().bool() if causal else True)
                q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
                want_out, want_lse = attention_oracle(q64, k64, v64, allowed.view(1, 1, T, T))
                want = grads(want_out, (q64, k64, v64), g.double())
                self.assertLess(rel_error(out, want_out), FWD_TOL)
                self.assertLess(lse_error(lse, want_lse), FWD_TOL)
                for name, a, b in zip("qkv", got, want):
                    self.assertLess(rel_error(a, b), GRAD_TOL, f"d{name}")


class RelativeAttention(unittest.TestCase):
    def test_against_torch_attention(self):
        B, H, M, T, D = 2, 2, 6, 19, 8
        K = M + T
        distance = M + torch.arange(T).unsqueeze(1) - torch.arange(K).unsqueeze(0)  # [T, K]
        for max_distance in (-1, 9):
            with self.subTest(max_distance=max_distance):
                qu, qv = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(2))
                k, v = (torch.randn(B, H, K, D, requires_grad=True) for _ in range(2))
                r = torch.randn(H, K + 3, D, requires_grad=True)
                inputs = (qu, qv, k, v, r)
                self.assertEqual(longseq.relative_attention_unsupported_reasons(*inputs, M, max_distance), [])
                out = longseq.relative_attention(*inputs, memory=M, max_distance=max_distance, kernel="fused")
                g = torch.randn_like(out)
                got = grads(out, inputs, g)
                qu64, qv64, k64, v64, r64 = (t.detach().double().requires_grad_(True) for t in inputs)
                rd = r64[:, distance.clamp(0, K - 1)]  # [H, T, K, D]: the row of each pair's distance
                logits = (qu64 @ k64.transpose(-1, -2) + (qv64.unsqueeze(-2) * rd).sum(-1)) / D ** 0.5
                allowed = (distance >= 0) & ((distance <= max_distance) if max_distance >= 0 else True)
                want_out = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1) @ v64
                want = grads(want_out, (qu64, qv64, k64, v64, r64), g.double())
                self.assertLess(rel_error(out, want_out), FWD_TOL)
                for name, a, b in zip(("qu", "qv", "k", "v", "r"), got, want):
                    self.assertLess(rel_error(a, b), GRAD_TOL, f"d{name}")

    def test_declines_with_reasons(self):
        qu = torch.randn(1, 1, 4, 8, dtype=torch.float64)
        r = torch.randn(1, 4, 8, dtype=torch.float64)
        self.assertTrue(longseq.relative_attention_unsupported_reasons(qu, qu, qu, qu, r))
        with self.assertRaises(ValueError):
            longseq.relative_attention(qu, qu, qu, qu, r, kernel="fused")
        with self.assertRaises((ValueError, RuntimeError)):
            longseq.relative_attention(qu.float(), qu.float(), qu.float(), qu.float(), r[:, :2].float())  # R < K


def causal_linear_oracle(a, b, v, eps):
    S = torch.cumsum(b.unsqueeze(-1) * v.unsqueeze(-2), dim=2)  # [B, H, T, M, E]
    z = torch.cumsum(b, dim=2)
    num = (a.unsqueeze(-1) * S).sum(-2)
    return num / ((a * z).sum(-1, keepdim=True) + eps), num


class CausalLinearAttention(unittest.TestCase):
    def test_against_torch_cumsum(self):
        B, H, T, M, E, eps = 2, 2, 29, 6, 5, 1e-6
        a, b = (torch.nn.functional.elu(torch.randn(B, H, T, M)) + 1 for _ in range(2))
        a, b = a.requires_grad_(True), b.requires_grad_(True)
        v = torch.randn(B, H, T, E, requires_grad=True)
        self.assertEqual(longseq.causal_linear_attention_unsupported_reasons(a, b, v), [])
        a64, b64, v64 = (t.detach().double().requires_grad_(True) for t in (a, b, v))
        want_y, want_p = causal_linear_oracle(a64, b64, v64, eps)
        for chunk in (1, 4, 64):
            for fn, want in ((lambda: longseq.causal_linear_attention(a, b, v, chunk, eps, "fused"), want_y),
                             (lambda: longseq.causal_prefix_products(a, b, v, chunk, "fused"), want_p)):
                with self.subTest(chunk=chunk, numerator_only=want is want_p):
                    out = fn()
                    g = torch.randn_like(out)
                    self.assertLess(rel_error(out, want), FWD_TOL)
                    want_grads = grads(want, (a64, b64, v64), g.double(), keep=True)
                    for name, x, y in zip("abv", grads(out, (a, b, v), g), want_grads):
                        self.assertLess(rel_error(x, y), GRAD_TOL, f"d{name}")

    def test_declines_with_reasons(self):
        a = torch.rand(1, 1, 8, 4, dtype=torch.float64)
        reasons = longseq.causal_linear_attention_unsupported_reasons(a, a, a)
        self.assertTrue(reasons)
        with self.assertRaisesRegex(ValueError, reasons[0]):
            longseq.causal_linear_attention(a, a, a, kernel="fused")
        with self.assertRaisesRegex(RuntimeError, "chunk must be positive"):
            longseq.causal_prefix_products(a, a, a, chunk=0)


if __name__ == "__main__":
    unittest.main()
