"""longseq's fused exact attention called from PyTorch against the same PyTorch's own attention, in one run
(docs/python.md): torch.nn.functional.scaled_dot_product_attention where it exists (PyTorch 2.x, whose CPU path is
a fused kernel) and softmax(q k^T) v written with matmuls (every version; skipped where its T x T scores would
pass --memory-cap). Causal, forward and forward+backward, the median of --repeats runs after one warm-up run.

  python3 python/bench/attention.py [--lengths 4096,16384] [--batch 1] [--heads 4] [--head-dim 64] [--repeats 3]
                                     [--threads N] [--memory-cap GiB]
"""
import argparse
import math
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # its warning about OpenBLAS's core: choose_environment sets the core
    import longseq


def choose_environment():
    # Both read only as the libraries load, so the script sets them and runs itself again once, as the program
    # does (docs/performance.md); every method then runs under the same BLAS core and allocation policy.
    env = dict(os.environ)
    name, override, user_set = longseq._C.blas_core()
    changed = False
    if override and not user_set:
        env["OPENBLAS_CORETYPE"] = override
        changed = True
    if "LONGSEQ_MALLOC" not in env and "hugetlb" not in env.get("GLIBC_TUNABLES", ""):
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
        changed = True
    if changed and "LONGSEQ_BENCH_CHILD" not in env:
        env["LONGSEQ_BENCH_CHILD"] = "1"
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def matmul_attention(q, k, v):
    T, S = q.size(-2), k.size(-2)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.size(-1)))
    blocked = torch.ones(T, S, dtype=torch.bool).triu(1 + S - T)
    return torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1) @ v


def matmul_fits(memory_cap, B, H, T):
    # scores, probabilities and their gradients: about four [B, H, T, T] float32 tensors alive at once.
    return 4 * B * H * T * T * 4 <= memory_cap * 2**30


def methods(memory_cap, B, H, T):
    out = [("longseq flash_attention", lambda q, k, v: longseq.flash_attention(q, k, v, causal=True))]
    if hasattr(F, "scaled_dot_product_attention"):
        out.append(("torch scaled_dot_product_attention",
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)))
    if matmul_fits(memory_cap, B, H, T):
        out.append(("torch matmul + softmax", matmul_attention))
    return out


def time_once(fn, q, k, v, backward, g):
    for t in (q, k, v):
        t.grad = None
    start = time.perf_counter()
    out = fn(q, k, v)
    if backward:
        out.backward(g)
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch's intra-op threads")
    parser.add_argument("--memory-cap", type=float, default=6.0, help="GiB for the matmul reference's scores")
    args = parser.parse_args()
    choose_environment()
    torch.set_num_threads(args.threads)  # Debian's torch starts with one thread
    B, H, D = args.batch, args.heads, args.head_dim
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OpenBLAS core {longseq._C.blas_core()[0]} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')}), "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}; causal, B={B} H={H} D={D} float32, "
          f"median of {args.repeats} after a warm-up")
    print("| T | pass | method | seconds | time / longseq's | max abs diff to longseq |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for T in (int(t) for t in args.lengths.split(",")):
        q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
        g = torch.randn(B, H, T, D)
        for backward in (False, True):
            label = "fwd+bwd" if backward else "fwd"
            rows, first = [], None
            for name, fn in methods(args.memory_cap, B, H, T):
                with torch.set_grad_enabled(backward):
                    _, out = time_once(fn, q, k, v, backward, g)  # warm-up; its output is the cross-check
                    seconds = statistics.median(time_once(fn, q, k, v, backward, g)[0] for _ in range(args.repeats))
                out = out.detach()
                if first is None:
                    first = (seconds, out)
                rows.append((name, seconds, (out - first[1]).abs().max().item()))
                del out
            for name, seconds, diff in rows:
                print(f"| {T} | {label} | {name} | {seconds:.3f} | {seconds / first[0]:.2f} | {diff:.1e} |",
                      flush=True)
        if not matmul_fits(args.memory_cap, B, H, T):
            print(f"| {T} | both | torch matmul + softmax: over --memory-cap | - | - | - |", flush=True)


if __name__ == "__main__":
    main()
