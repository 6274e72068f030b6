"""longseq's modules from Python against the same modules run entirely in C++ (longseq._C.cpp_forward_backward:
built from the same spec under the same seed, forward and gradients by C++ autograd), and the wrapper's promises:
the parameters are the C++ tensors, conversions and modes reach the C++ module, bad input raises."""
import copy
import json
import pickle
import unittest

import torch

import longseq
from longseq import _C
from helpers import rel_error

B, T, C, H = 2, 13, 32, 4
SEED = 1234


def padding(lengths, T):
    return torch.arange(T).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


class CppEquivalence(unittest.TestCase):
    """Each module's output, input gradient, parameters and parameter gradients from Python equal C++'s."""

    def check(self, make, causal, padding_mask=None, global_mask=None, ffn=False):
        x = torch.randn(B, T, C)
        g = torch.randn(B, T, C)
        torch.manual_seed(SEED)
        module = make()
        xi = x.clone().requires_grad_(True)
        out = module(xi, padding_mask) if ffn else module(xi, causal, padding_mask, global_mask)
        out.backward(g)
        want = _C.cpp_forward_backward(module._kind, json.dumps(module._spec), SEED, True, x, causal, padding_mask,
                                       global_mask, g)
        where = f"{module!r} causal={causal} padded={padding_mask is not None}"
        self.assertEqual(rel_error(out, want["out"]), 0.0, where)
        self.assertEqual(rel_error(xi.grad, want["x_grad"]), 0.0, where)
        params = dict(module.named_parameters())
        self.assertEqual(sorted(params), sorted(want["params"]), where)
        for name, p in params.items():
            self.assertTrue(torch.equal(p.detach(), want["params"][name]), f"{where}: {name}")
            if want["param_grads"][name] is None:
                self.assertTrue(p.grad is None or not p.grad.any(), f"{where}: {name} has a gradient C++ lacks")
            else:
                self.assertIsNotNone(p.grad, f"{where}: {name} got no gradient")
                self.assertLess(rel_error(p.grad, want["param_grads"][name]), 1e-6, f"{where}: {name}")

    def test_every_mixer_defaults_and_sparse_regime(self):
        pad = padding([T, T - 4], T)
        for name in longseq.mixers():
            props = _C.mixer_properties(name)
            configs = [None] + ([json.loads(props["sparse_options"])] if props["sparse_options"] else [])
            modes = [c for c, ok in ((True, props["supports_causal"]), (False, props["supports_bidirectional"])) if ok]
            for options in configs:
                for causal in modes:
                    with self.subTest(mixer=name, options=options, causal=causal):
                        self.check(lambda: longseq.Mixer(name, C, H, options), causal)
                        self.check(lambda: longseq.Mixer(name, C, H, options), causal, padding_mask=pad)

    def test_global_tokens_reach_the_mixer(self):
        glob = torch.zeros(B, T, dtype=torch.bool)
        glob[:, 0] = True
        self.check(lambda: longseq.Mixer("longformer", C, H, {"window": [2]}), False, global_mask=glob)
        torch.manual_seed(0)
        m = longseq.Mixer("longformer", C, H, {"window": [2]})
        x = torch.randn(1, T, C)
        self.assertGreater((m(x, False, None, glob[:1]) - m(x)).abs().max().item(), 1e-4)

    def test_every_block_kind(self):
        pad = padding([T - 3, T], T)
        blocks = [("standard", "full", None), ("standard", {"name": "longformer", "window": [2]}, {"name": "moe"}),
                  ("post_norm", "linear", "chunked"), ("standard", "performer", "sparse_ff"), ("mega", None, None),
                  ("gss", None, None)]
        self.assertEqual(sorted({b[0] for b in blocks}), sorted(longseq.blocks()))
        for kind, mixer, ff in blocks:
            for causal in (True, False):
                # Mega's and GSS's bidirectional form is an option of the block (its kernels run both ways).
                options = {"bidirectional": True} if kind in ("mega", "gss") and not causal else None
                make = lambda: longseq.Block(kind, C, H, d_ff=64, mixer=mixer, ff=ff, options=options)
                with self.subTest(kind=kind, mixer=mixer, ff=ff, causal=causal):
                    self.check(make, causal)
                    self.check(make, causal, pad)

    def test_every_feed_forward_kind(self):
        pad = padding([T, 5], T)
        for kind in longseq.ffns():
            with self.subTest(kind=kind):
                self.check(lambda: longseq.FeedForward(kind, C, 64), False, ffn=True)
                self.check(lambda: longseq.FeedForward(kind, C, 64), False, pad, ffn=True)

    def test_mixers_listed_as_registered(self):
        self.assertIn("full", longseq.mixers())
        self.assertEqual(len(longseq.mixers()), len(_C.mixers()))
        entry = longseq.describe("longformer")
        self.assertIn("window", [o["name"] for o in entry["options"]])
        self.assertIn("moe", longseq.ffns())
        self.assertIn("gss", longseq.blocks())


class Gradients(unittest.TestCase):
    """gradcheck in double on tiny sizes, with respect to the input and every parameter (passed to gradcheck as
    inputs: it perturbs them in place, which the C++ module sees because they are its tensors)."""

    def gradcheck(self, module, causal=True, ffn=False, T=5):
        module.double()
        params = [p for p in module.parameters() if p.requires_grad]
        x = torch.randn(1, T, module._spec["d_model"], dtype=torch.double, requires_grad=True)
        fn = (lambda x, *ps: module(x)) if ffn else (lambda x, *ps: module(x, causal))
        self.assertTrue(torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4))

    def test_full(self):
        self.gradcheck(longseq.Mixer("full", 8, 2))

    def test_longformer_sparse(self):
        self.gradcheck(longseq.Mixer("longformer", 8, 2, {"window": [1], "dilation": [2]}), causal=False, T=7)

    def test_linear_causal_chunks(self):
        self.gradcheck(longseq.Mixer("linear", 8, 2, {"chunk": 2}), T=7)

    def test_gss_block(self):
        self.gradcheck(longseq.Block("gss", 8, 2, options={"state_dim": 4, "gate_dim": 8, "ssm_dim": 4}))

    def test_standard_block_dense(self):
        self.gradcheck(longseq.Block("standard", 8, 2, d_ff=16, mixer="full"))

    def test_dense_feed_forward(self):
        self.gradcheck(longseq.FeedForward("dense", 8, 12), ffn=True)


class Parameters(unittest.TestCase):
    def test_parameters_are_the_cpp_tensors(self):
        m = longseq.Block("standard", C, H, mixer="performer")
        cpp = dict(m._cpp.named_parameters())
        py = dict(m.named_parameters())
        self.assertEqual(list(py), list(cpp))
        for name in cpp:
            self.assertIs(py[name], cpp[name], name)
        self.assertEqual(sorted(m.state_dict()), sorted(list(cpp) + [n for n, _ in m._cpp.named_buffers()]))

    def test_optimizer_step_changes_the_cpp_module(self):
        torch.manual_seed(0)
        m = longseq.Mixer("full", C, H)
        x = torch.randn(B, T, C)
        before = m(x, True).detach()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        m(x, True).pow(2).mean().backward()
        opt.step()
        after = m(x, True).detach()
        self.assertGreater((after - before).abs().max().item(), 1e-3)
        for name, t in m._cpp.named_parameters():  # the step wrote into the tensors C++ reads
            self.assertTrue(torch.equal(t, dict(m.named_parameters())[name]))
        torch.manual_seed(99)
        fresh = longseq.Mixer("full", C, H)
        self.assertGreater((fresh(x, True) - after).abs().max().item(), 1e-3)
        fresh.load_state_dict(m.state_dict())
        self.assertEqual(rel_error(fresh(x, True), after), 0.0)

    def test_load_state_dict_is_checked(self):
        m = longseq.Mixer("full", C, H)
        state = m.state_dict()
        del state["qkv.weight"]
        with self.assertRaisesRegex(RuntimeError, "qkv.weight"):
            m.load_state_dict(state)
        with self.assertRaisesRegex(RuntimeError, "size mismatch"):
            longseq.Mixer("full", 16, H).load_state_dict(m.state_dict())

    def test_double_and_back_keep_the_aliases(self):
        m = longseq.Mixer("performer", C, H)
        for dtype in (torch.float64, torch.float32):
            m.to(dtype)
            cpp = dict(m._cpp.named_parameters() + m._cpp.named_buffers())
            for name, t in list(m.named_parameters()) + list(m.named_buffers()):
                self.assertIs(t, cpp[name], name)
                if t.is_floating_point():
                    self.assertEqual(t.dtype, dtype, name)
            x = torch.randn(B, T, C, dtype=dtype, requires_grad=True)
            out = m(x, True)
            self.assertEqual(out.dtype, dtype)
            out.sum().backward()
            self.assertTrue(all(p.grad is not None and p.grad.dtype == dtype for p in m.parameters()))
            m.zero_grad()

    def test_buffers_the_cpp_module_updates_are_visible(self):
        m = longseq.Mixer("performer", C, H, {"redraw": 1})
        calls = dict(m.named_buffers())["calls"]
        projection = dict(m.named_buffers())["projection"].clone()
        m(torch.randn(1, T, C))
        m(torch.randn(1, T, C))
        self.assertEqual(calls.item(), 2)
        self.assertFalse(torch.equal(projection, dict(m.named_buffers())["projection"]))

    def test_replacing_a_cpp_tensor_is_refused(self):
        m = longseq.Mixer("full", C, H)
        with self.assertRaisesRegex(AttributeError, "cannot be replaced"):
            m.qkv.weight = torch.nn.Parameter(torch.zeros(3 * C, C))

    def test_deepcopy_and_pickle_are_independent_equal_modules(self):
        m = longseq.Mixer("full", C, H).eval()
        x = torch.randn(1, T, C)
        for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            self.assertFalse(other.training)
            self.assertEqual(rel_error(other(x), m(x)), 0.0)
            with torch.no_grad():
                other.qkv.weight.zero_()
            self.assertGreater((other(x) - m(x)).abs().max().item(), 1e-3)


class Streaming(unittest.TestCase):
    """Chunks through a state equal the whole sequence (invariant 6), for every module that says it streams."""

    def check(self, module, chunks=(5, 1, 7)):
        module.double().eval()
        x = torch.randn(B, sum(chunks), C, dtype=torch.float64)
        whole = module(x, True)
        state = module.initial_state(B)
        parts, start = [], 0
        for n in chunks:
            parts.append(module(x[:, start:start + n], True, state=state))
            start += n
            self.assertEqual(state.offset, start)
        self.assertLess(rel_error(torch.cat(parts, 1), whole), 1e-9, repr(module))
        self.assertGreater((module(x[:, chunks[0]:], True) - torch.cat(parts[1:], 1)).abs().max().item(), 1e-6,
                           f"{module!r}: the state carried nothing")

    def test_every_streaming_mixer(self):
        streaming = [n for n in longseq.mixers() if _C.mixer_properties(n)["streams"]]
        self.assertIn("full", streaming)
        for name in streaming:
            props = _C.mixer_properties(name)
            sparse = json.loads(props["sparse_options"] or "null")
            # Chunked LSH and balanced routing are not strictly causal (DESIGN.md, invariant 2): a stream equals
            # the whole only in their strictly causal limit, as in the C++ invariant tests.
            if sparse and not props["strictly_causal"]:
                sparse.update(json.loads(props["strictly_causal_options"]))
            for options in [None] + ([sparse] if sparse else []):
                with self.subTest(mixer=name, options=options):
                    self.check(longseq.Mixer(name, C, H, options))

    def test_streaming_blocks(self):
        for make in (lambda: longseq.Block("standard", C, H, mixer="linear"), lambda: longseq.Block("gss", C, H),
                     lambda: longseq.Block("mega", C, H, options={"chunk": 4})):
            with self.subTest(block=make()._spec["kind"]):
                self.check(make())

    def test_state_errors(self):
        m = longseq.Mixer("full", C, H)
        state = m.initial_state(B)
        with self.assertRaisesRegex(ValueError, "another module"):
            longseq.Mixer("full", C, H)(torch.randn(B, 3, C), True, state=state)
        with self.assertRaisesRegex(ValueError, "causal=True"):
            m(torch.randn(B, 3, C), state=state)
        with self.assertRaisesRegex(ValueError, "mixer yoso cannot stream"):
            longseq.Mixer("yoso", C, H).initial_state(B)
        with self.assertRaisesRegex(ValueError, "feed-forward dense cannot stream"):
            longseq.FeedForward("dense", C).initial_state(B)
        with self.assertRaisesRegex(ValueError, "batch >= 1"):
            m.initial_state(0)
        m(torch.randn(B, 3, C), True, state=state)
        self.assertTrue(state.tensors())  # the KV cache, by name
        state.reorder(torch.tensor([1, 1, 0]))
        self.assertEqual(m(torch.randn(3, 2, C), True, state=state).shape, (3, 2, C))


class Modes(unittest.TestCase):
    def test_train_and_eval_reach_the_cpp_module(self):
        for m in (longseq.Mixer("full", C, H, {"dropout": 0.5}), longseq.Block("standard", C, H, dropout=0.5)):
            x = torch.randn(1, T, C)
            self.assertTrue(m._cpp.training)
            self.assertFalse(torch.equal(m(x), m(x)))  # dropout draws anew in training
            m.eval()
            self.assertFalse(m._cpp.training)
            self.assertFalse(any(mod.training for mod in m.modules()))
            self.assertTrue(torch.equal(m(x), m(x)))
            m.train()
            self.assertTrue(m._cpp.training)


class BadInput(unittest.TestCase):
    def test_unknown_names(self):
        with self.assertRaisesRegex(ValueError, r'unknown mixer "nope"; registered mixers: full'):
            longseq.Mixer("nope", C, H)
        with self.assertRaisesRegex(ValueError, "unknown block kind"):
            longseq.Block("nope", C, H)
        with self.assertRaisesRegex(ValueError, "unknown feed-forward kind"):
            longseq.FeedForward("nope", C)
        with self.assertRaisesRegex(ValueError, "unknown mixer"):
            longseq.Block("standard", C, H, mixer="nope")
        with self.assertRaisesRegex(ValueError, "registry must be one of"):
            longseq.describe("full", "nope")

    def test_bad_options(self):
        with self.assertRaisesRegex(ValueError, "unknown key mixer.bogus; valid keys: "):
            longseq.Mixer("full", C, H, {"bogus": 1})
        with self.assertRaisesRegex(ValueError, "window"):
            longseq.Mixer("longformer", C, H, {"window": "wide"})
        with self.assertRaisesRegex(ValueError, "dropout"):
            longseq.Mixer("full", C, H, {"dropout": 2.0})
        with self.assertRaisesRegex(ValueError, "options must be a dict"):
            longseq.Mixer("full", C, H, [1, 2])
        with self.assertRaisesRegex(TypeError, "options must be JSON values"):
            longseq.Mixer("full", C, H, {"dropout": torch.tensor(0.1)})
        with self.assertRaisesRegex(ValueError, "runs no mixer"):
            longseq.Block("gss", C, H, mixer="full")
        with self.assertRaisesRegex(ValueError, "unknown key block standard.ff.bogus"):
            longseq.Block("standard", C, H, ff={"name": "moe", "bogus": 1})

    def test_another_torch_is_an_import_error(self):
        built = longseq._build.torch_library
        try:
            longseq._build.torch_library = "/elsewhere/libtorch_cpu.so"
            with self.assertRaisesRegex(ImportError, "this build of longseq is for torch .* but this python's torch"):
                longseq._check_torch()
        finally:
            longseq._build.torch_library = built
        longseq._check_torch()

    def test_bad_sizes(self):
        with self.assertRaisesRegex(ValueError, "multiple of n_heads"):
            longseq.Mixer("full", 30, 4)
        with self.assertRaisesRegex(ValueError, "d_model must be an integer >= 1, got 0"):
            longseq.Mixer("full", 0, 4)
        with self.assertRaisesRegex(ValueError, "d_model must be an integer >= 1, got 32.0"):
            longseq.Mixer("full", 32.0, 4)
        with self.assertRaisesRegex(ValueError, "d_ff must be an integer >= 1"):
            longseq.FeedForward("dense", C, -1)
        with self.assertRaisesRegex(ValueError, "layer_index must be an integer >= 0, got \"a\""):
            longseq.Mixer("full", C, H, layer_index="a")
        with self.assertRaisesRegex(ValueError, r"dropout must be a number in \[0, 1\), got 2.0"):
            longseq.Block("standard", C, H, dropout=2.0)
        with self.assertRaisesRegex(ValueError, "ff_activation must be a string, got 3"):
            longseq.Block("standard", C, H, ff_activation=3)
        with self.assertRaisesRegex(ValueError, "activation \"tanh\" is not one of"):
            longseq.FeedForward("dense", C, activation="tanh")

    def test_bad_tensors_raise_not_crash(self):
        m = longseq.Mixer("full", C, H)
        with self.assertRaisesRegex(ValueError, r"C = d_model = 32, got \[2, 13, 33\] float"):
            m(torch.randn(2, T, C + 1))
        with self.assertRaisesRegex(ValueError, "floating-point"):
            m(torch.ones(2, T, C, dtype=torch.long))
        # T = 0 divided by zero in lsh and routing (SIGFPE) and a padding mask of another length passed bigbird.
        for name in ("lsh", "routing", "bigbird"):
            with self.assertRaisesRegex(ValueError, r"B, T >= 1 .* got \[1, 0, 32\]"):
                longseq.Mixer(name, C, H)(torch.randn(1, 0, C), True)
            with self.assertRaisesRegex(ValueError, r"padding_mask must be a bool \[B, T\] = \[2, 13\] tensor, "
                                                    r"got \[2, 9\]"):
                longseq.Mixer(name, C, H)(torch.randn(2, T, C), True, torch.zeros(2, 9, dtype=torch.bool))
        with self.assertRaisesRegex(ValueError, "global_mask must be a bool"):
            m(torch.randn(2, T, C), global_mask=torch.zeros(2, T))
        with self.assertRaises(TypeError):
            m("not a tensor")
        with self.assertRaisesRegex(ValueError, "no global_mask"):
            longseq.FeedForward("dense", C)._cpp.forward(torch.randn(1, 2, C), False, None,
                                                         torch.zeros(1, 2, dtype=torch.bool))
        with self.assertRaisesRegex(RuntimeError, "runs only as part of its C"):
            m.qkv(torch.randn(1, 2, C))


if __name__ == "__main__":
    unittest.main()
