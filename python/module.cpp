// The Python extension module longseq._C (docs/python.md): the three registries' modules (mixers, block kinds,
// feed-forward kinds) as handles on the C++ torch::nn::Module, and the fused kernels as functions on tensors whose
// gradients run through their C++ autograd functions. python/longseq/__init__.py turns the handles into
// torch.nn.Modules whose parameters are the C++ tensors themselves.
#include <torch/extension.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "longseq/blocks.h"
#include "longseq/common.h"
#include "longseq/ffn.h"
#include "longseq/kernels/attention_reference.h"
#include "longseq/kernels/banded_attention.h"
#include "longseq/kernels/block_sparse_attention.h"
#include "longseq/kernels/causal_linear_attention.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/kernels/linear_attention.h"
#include "longseq/kernels/relative_attention.h"
#include "longseq/registry.h"
#include "longseq/runtime.h"

namespace py = pybind11;
using longseq::Json;
using OptTensor = std::optional<torch::Tensor>;

namespace {

torch::Tensor or_undefined(const OptTensor& t) { return t ? *t : torch::Tensor(); }

// What a module is built from, as one JSON object (the Python constructor's arguments): the same spec builds the
// module for Python and, in cpp_forward_backward, a second one entirely on the C++ side.
enum class Kind { Mixer, Block, Ffn };

// The spec's scalar arguments, each checked here with a message naming it (nlohmann's own errors name no key).
std::string got(const Json& spec, const std::string& key) {
  return spec.contains(key) ? longseq::json_excerpt(spec[key]) : std::string("nothing");
}

// spec[key] as an integer >= min; `fallback` when absent (none: required).
int64_t integer(const Json& spec, const std::string& key, const std::string& what, int64_t min,
                std::optional<int64_t> fallback = std::nullopt) {
  if (!spec.contains(key) && fallback) return *fallback;
  if (!spec.contains(key) || !spec[key].is_number_integer() || spec[key].get<int64_t>() < min)
    throw longseq::Error(what + ": " + key + " must be an integer >= " + std::to_string(min) + ", got " +
                         got(spec, key));
  return spec[key].get<int64_t>();
}

double dropout(const Json& spec, const std::string& what) {
  if (!spec.contains("dropout")) return 0.0;
  const auto& d = spec["dropout"];
  if (!d.is_number() || d.get<double>() < 0 || d.get<double>() >= 1)
    throw longseq::Error(what + ": dropout must be a number in [0, 1), got " + got(spec, "dropout"));
  return d.get<double>();
}

std::string text(const Json& spec, const std::string& key, const std::string& what, const std::string& fallback) {
  if (!spec.contains(key)) return fallback;
  if (!spec[key].is_string()) throw longseq::Error(what + ": " + key + " must be a string, got " + got(spec, key));
  return spec[key].get<std::string>();
}

// A name plus an options object -> the registry's "name" / {"name": ..., options} form.
Json named(const Json& spec, const std::string& name_key, const std::string& options_key) {
  Json out = spec.contains(options_key) && !spec[options_key].is_null() ? spec[options_key] : Json::object();
  if (!out.is_object()) throw longseq::Error(options_key + " must be a dict, got " + longseq::json_excerpt(out));
  out["name"] = spec.at(name_key);
  return out;
}

// A built module: the C++ module, typed by its registry so that forward can call it.
struct Built {
  std::string what;  // "mixer full", for messages
  int64_t d_model = 0;
  std::shared_ptr<torch::nn::Module> module;
  longseq::Mixer mixer;
  longseq::Layer layer;
  longseq::FeedForwardKind ffn;
};

Built build(Kind kind, const std::string& spec_text) {
  const Json spec = longseq::parse_json(spec_text, "module spec");
  Built b;
  const int64_t layer_index = integer(spec, "layer_index", "module", 0, 0);
  if (kind == Kind::Mixer) {
    const auto ms = longseq::parse_mixer_spec(named(spec, "name", "options"), "mixer");
    b.d_model = integer(spec, "d_model", "mixer " + ms.name, 1);
    b.mixer = longseq::make_mixer(ms, b.d_model, integer(spec, "n_heads", "mixer " + ms.name, 1), layer_index);
    b.module = b.mixer;
    b.what = "mixer " + ms.name;
  } else if (kind == Kind::Block) {
    const auto bs = longseq::parse_block_spec(named(spec, "kind", "options"), "block");
    const auto& info = longseq::find_block(bs.name);
    longseq::BlockArgs a;
    const std::string what = "block " + bs.name;
    a.d_model = b.d_model = integer(spec, "d_model", what, 1);
    a.n_heads = integer(spec, "n_heads", what, 1);
    a.d_ff = integer(spec, "d_ff", what, 1, 4 * a.d_model);
    a.dropout = dropout(spec, what);
    a.ff_activation = text(spec, "ff_activation", what, "gelu");
    a.layer_index = layer_index;
    a.options = bs.options;
    longseq::MixerSpec ms;
    longseq::FfnSpec fs;
    if (info.uses_mixer) {
      ms = longseq::parse_mixer_spec(spec.value("mixer", Json("full")), "block " + bs.name + ".mixer");
      a.mixer = &ms;
    } else if (spec.contains("mixer") && !spec["mixer"].is_null()) {
      throw longseq::Error("block " + bs.name + " runs no mixer; leave mixer unset");
    }
    if (spec.contains("ff") && !spec["ff"].is_null()) {
      fs = longseq::parse_ffn_spec(spec["ff"], "block " + bs.name + ".ff");
      a.ff = &fs;
    }
    b.layer = longseq::make_layer(bs, a);
    b.module = b.layer;
    b.what = "block " + bs.name;
  } else {
    const auto fs = longseq::parse_ffn_spec(named(spec, "kind", "options"), "feed-forward");
    longseq::FfnArgs a;
    const std::string what = "feed-forward " + fs.name;
    a.d_model = b.d_model = integer(spec, "d_model", what, 1);
    a.d_ff = integer(spec, "d_ff", what, 1, 4 * a.d_model);
    a.dropout = dropout(spec, what);
    a.activation = text(spec, "activation", what, "gelu");
    a.layer_index = layer_index;
    b.ffn = longseq::make_ffn(fs, a);
    b.module = b.ffn;
    b.what = "feed-forward " + fs.name;
  }
  return b;
}

longseq::MixContext context(bool causal, const OptTensor& padding_mask, const OptTensor& global_mask) {
  longseq::MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = or_undefined(padding_mask);
  ctx.global_mask = or_undefined(global_mask);
  return ctx;
}

// A module's streaming state (KV cache, running sums, ...) and the position the stream has reached.
struct Stream {
  std::unique_ptr<longseq::MixerState> state;
  const torch::nn::Module* owner = nullptr;  // a mixer downcasts the state it made: no other module's
  int64_t offset = 0;
};

std::shared_ptr<Stream> initial_state(const Built& b, int64_t batch) {
  if (batch < 1) throw longseq::Error(b.what + ": initial_state needs batch >= 1, got " + std::to_string(batch));
  auto s = std::make_shared<Stream>();
  if (b.mixer) s->state = b.mixer->initial_state(batch);
  if (b.layer) s->state = b.layer->initial_state(batch);
  if (!s->state) throw longseq::Error(b.what + " cannot stream (it keeps no state between calls)");
  s->owner = b.module.get();
  return s;
}

std::string shape(const torch::Tensor& t) {
  std::string out;
  for (auto n : t.sizes()) out += (out.empty() ? "[" : ", ") + std::to_string(n);
  return out.empty() ? "[]" : out + "]";
}

// The module contract checked once here, since not every C++ module checks it and some fail worse than an error on
// breaking it (lsh and routing divide by zero on T = 0; bigbird takes a padding mask of another length).
void check_inputs(const Built& b, const torch::Tensor& x, const OptTensor& padding_mask, const OptTensor& global_mask) {
  if (x.dim() != 3 || x.size(0) < 1 || x.size(1) < 1 || x.size(2) != b.d_model || !x.is_floating_point())
    throw longseq::Error(b.what + ": x must be a floating-point [B, T, C] tensor with B, T >= 1 and C = d_model = " +
                         std::to_string(b.d_model) + ", got " + shape(x) + " " + std::string(x.dtype().name()));
  for (const auto& [name, mask] :
       {std::make_pair("padding_mask", &padding_mask), std::make_pair("global_mask", &global_mask)}) {
    if (*mask && ((*mask)->dim() != 2 || (*mask)->size(0) != x.size(0) || (*mask)->size(1) != x.size(1) ||
                  (*mask)->scalar_type() != torch::kBool))
      throw longseq::Error(b.what + ": " + name + " must be a bool [B, T] = [" + std::to_string(x.size(0)) + ", " +
                           std::to_string(x.size(1)) + "] tensor, got " + shape(**mask) + " " +
                           std::string((*mask)->dtype().name()));
  }
}

torch::Tensor run(Built& b, const torch::Tensor& x, bool causal, const OptTensor& padding_mask,
                  const OptTensor& global_mask, Stream* stream = nullptr) {
  check_inputs(b, x, padding_mask, global_mask);
  if (b.ffn) {
    if (global_mask) throw longseq::Error("a feed-forward kind takes no global_mask");
    return b.ffn->forward(x, or_undefined(padding_mask));
  }
  auto ctx = context(causal, padding_mask, global_mask);
  if (stream) {
    if (stream->owner != b.module.get())
      throw longseq::Error(b.what + ": this state was made by another module's initial_state");
    if (!causal) throw longseq::Error(b.what + ": a stream runs causally; call with causal=True");
    ctx.state = stream->state.get();
    ctx.offset = stream->offset;
  }
  auto y = b.mixer ? b.mixer->forward(x, ctx) : b.layer->forward(x, ctx);
  if (stream) stream->offset += x.size(1);
  return y;
}

// One entry per module of the tree: its path ("" for the root, "a.b" below) and its own parameters and buffers.
using Entry = std::tuple<std::string, std::vector<std::pair<std::string, torch::Tensor>>,
                         std::vector<std::pair<std::string, torch::Tensor>>>;
std::vector<Entry> tree(const torch::nn::Module& root) {
  std::vector<Entry> out;
  for (const auto& m : root.named_modules("", /*include_self=*/true)) {
    Entry e;
    std::get<0>(e) = m.key();
    for (const auto& p : m.value()->named_parameters(/*recurse=*/false))
      std::get<1>(e).emplace_back(p.key(), p.value());
    for (const auto& p : m.value()->named_buffers(/*recurse=*/false)) std::get<2>(e).emplace_back(p.key(), p.value());
    out.push_back(std::move(e));
  }
  return out;
}

// The test oracle: a fresh module from the same spec under torch's seed, its forward and its gradients, all in C++
// (no Python autograd, no wrapper), for python/tests to compare the Python module against.
py::dict cpp_forward_backward(Kind kind, const std::string& spec, uint64_t seed, bool training, const torch::Tensor& x,
                              bool causal, const OptTensor& padding_mask, const OptTensor& global_mask,
                              const torch::Tensor& grad_out) {
  torch::Tensor out;
  std::vector<torch::Tensor> wrt, grads;
  std::vector<std::string> names;
  {
    // LibTorch's autograd engine refuses to run while its caller holds the GIL.
    py::gil_scoped_release no_gil;
    torch::manual_seed(seed);
    Built b = build(kind, spec);
    b.module->train(training);
    wrt.push_back(x.detach().clone().requires_grad_(true));
    out = run(b, wrt[0], causal, padding_mask, global_mask);
    for (const auto& p : b.module->named_parameters())
      if (p.value().requires_grad()) wrt.push_back(p.value()), names.push_back(p.key());
    grads = torch::autograd::grad({out}, wrt, {grad_out}, /*retain_graph=*/false, /*create_graph=*/false,
                                  /*allow_unused=*/true);
  }
  py::dict params, param_grads;
  for (size_t i = 0; i < names.size(); ++i) {
    params[py::str(names[i])] = wrt[i + 1].detach();
    param_grads[py::str(names[i])] = grads[i + 1].defined() ? py::cast(grads[i + 1]) : py::none();
  }
  py::dict r;
  r["out"] = out.detach();
  r["x_grad"] = grads[0];
  r["params"] = params;
  r["param_grads"] = param_grads;
  return r;
}

py::list registry_list(const std::vector<std::tuple<std::string, std::string, const longseq::Schema*>>& rows) {
  py::list out;
  for (const auto& row : rows) {
    py::list options;
    for (const auto& o : *std::get<2>(row)) {
      py::dict d;
      d["name"] = o.name;
      d["type"] = longseq::option_type_name(o.type);
      d["default"] = o.default_value.dump();
      d["doc"] = o.doc;
      if (!o.choices.empty()) d["choices"] = o.choices;
      options.append(d);
    }
    py::dict d;
    d["name"] = std::get<0>(row);
    d["summary"] = std::get<1>(row);
    d["options"] = options;
    out.append(d);
  }
  return out;
}

template <class Registry>
std::vector<std::tuple<std::string, std::string, const longseq::Schema*>> rows_of(const Registry& registry) {
  std::vector<std::tuple<std::string, std::string, const longseq::Schema*>> rows;
  for (const auto& info : registry) rows.emplace_back(info.name, info.summary, &info.schema);
  return rows;
}

longseq::BlockSparseMask sparse_mask(bool causal, const OptTensor& q_pos, const OptTensor& k_pos, double self_penalty,
                                     int64_t window_left, int64_t window_right) {
  longseq::BlockSparseMask m;
  m.causal = causal;
  m.q_pos = or_undefined(q_pos);
  m.k_pos = or_undefined(k_pos);
  m.self_penalty = self_penalty;
  m.window_left = window_left;
  m.window_right = window_right;
  return m;
}

longseq::BlockSparseLayout sparse_layout(int64_t block_q, int64_t block_k, const torch::Tensor& offsets,
                                         const torch::Tensor& blocks) {
  return longseq::BlockSparseLayout{block_q, block_k, offsets, blocks};
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "longseq's C++ modules and fused kernels (use the longseq package, not this module)";

  // longseq's Errors are bad input (an unknown option, a wrong shape): ValueError; LibTorch's checks keep their
  // message without the C++ backtrace that c10::Error::what() appends.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const longseq::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const c10::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });

  py::enum_<Kind>(m, "Kind", py::module_local())
      .value("mixer", Kind::Mixer)
      .value("block", Kind::Block)
      .value("ffn", Kind::Ffn);

  // module_local: torch's own bindings may register torch::nn::Module types with pybind11; ours stay apart.
  py::class_<Built>(m, "Handle", py::module_local())
      .def(py::init(&build), py::arg("kind"), py::arg("spec"))
      .def("forward", &run, py::arg("x"), py::arg("causal") = false, py::arg("padding_mask") = py::none(),
           py::arg("global_mask") = py::none(), py::arg("state") = py::none(),
           py::call_guard<py::gil_scoped_release>())
      .def("initial_state", &initial_state, py::arg("batch"))
      .def("tree", [](const Built& b) { return tree(*b.module); })
      .def("train", [](Built& b, bool mode) { b.module->train(mode); }, py::arg("mode"))
      .def_property_readonly("training", [](const Built& b) { return b.module->is_training(); })
      .def("named_parameters", [](const Built& b) {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (const auto& p : b.module->named_parameters()) out.emplace_back(p.key(), p.value());
        return out;
      })
      .def("named_buffers", [](const Built& b) {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (const auto& p : b.module->named_buffers()) out.emplace_back(p.key(), p.value());
        return out;
      })
      .def("aux_losses", [](const Built& b) {
        if (b.ffn) return b.ffn->aux_losses();
        if (b.layer) return b.layer->aux_losses();
        return std::map<std::string, torch::Tensor>{};
      })
      .def("aux_metrics", [](const Built& b) {
        if (b.ffn) return b.ffn->aux_metrics();
        if (b.layer) return b.layer->aux_metrics();
        return std::map<std::string, double>{};
      })
      .def("clear_aux", [](Built& b) {
        if (b.ffn) b.ffn->clear_aux();
        if (b.layer) b.layer->clear_aux();
      });

  py::class_<Stream, std::shared_ptr<Stream>>(m, "State", py::module_local())
      .def_property_readonly("offset", [](const Stream& s) { return s.offset; })
      .def("tensors", [](const Stream& s) { return s.state->tensors(); })
      .def("reorder", [](Stream& s, const torch::Tensor& index) { s.state->reorder(index); }, py::arg("index"));

  m.def("cpp_forward_backward", &cpp_forward_backward, py::arg("kind"), py::arg("spec"), py::arg("seed"),
        py::arg("training"), py::arg("x"), py::arg("causal"), py::arg("padding_mask"), py::arg("global_mask"),
        py::arg("grad_out"));

  m.def("mixers", [] { return registry_list(rows_of(longseq::mixer_registry())); });
  m.def("blocks", [] { return registry_list(rows_of(longseq::block_registry())); });
  m.def("ffns", [] { return registry_list(rows_of(longseq::ffn_registry())); });
  m.def("mixer_properties", [](const std::string& name) {
    const auto& info = longseq::find_mixer(name);
    py::dict d;
    d["supports_causal"] = info.supports_causal;
    d["supports_bidirectional"] = info.supports_bidirectional;
    d["strictly_causal"] = info.strictly_causal;
    d["streams"] = info.streams;
    d["exact_gradients"] = info.exact_gradients;
    d["sparse_options"] = info.sparse_options.is_null() ? std::string() : info.sparse_options.dump();
    d["strictly_causal_options"] = info.strictly_causal_options.dump();
    return d;
  });
  m.def("blas_core", [] {
    const auto core = longseq::blas_core();
    return std::make_tuple(core.name, core.override, core.user_set);
  });

  // Kernels. q, k, v: [B, H, T, D] (keys and values [B, H, S, D]); key_padding [B, S] bool, true = padding.
  m.def(
      "exact_attention",
      [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal,
         const OptTensor& key_padding, const std::string& kernel) {
        if (kernel != "auto" && kernel != "fused" && kernel != "reference")
          throw longseq::Error("exact_attention: kernel must be auto, fused or reference, got \"" + kernel + "\"");
        return longseq::exact_attention(q, k, v, longseq::AttentionMask{causal, or_undefined(key_padding)}, kernel);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal") = false, py::arg("key_padding") = py::none(),
      py::arg("kernel") = "auto", py::call_guard<py::gil_scoped_release>());
  m.def(
      "flash_attention_unsupported_reasons",
      [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal,
         const OptTensor& key_padding) {
        return longseq::flash_attention_unsupported_reasons(q, k, v,
                                                            longseq::AttentionMask{causal, or_undefined(key_padding)});
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal") = false, py::arg("key_padding") = py::none());
  m.def(
      "banded_attention",
      [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t window, int64_t dilation,
         bool causal, const OptTensor& key_padding, const std::string& kernel) {
        if (window < 0 || dilation < 1)
          throw longseq::Error("banded_attention: window must be >= 0 and dilation >= 1, got " +
                               std::to_string(window) + " and " + std::to_string(dilation));
        auto r = longseq::banded_attention(q, k, v, longseq::BandSpec{window, dilation, causal},
                                           or_undefined(key_padding), kernel);
        return std::make_pair(r.out, r.lse);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("window"), py::arg("dilation") = 1, py::arg("causal") = false,
      py::arg("key_padding") = py::none(), py::arg("kernel") = "auto", py::call_guard<py::gil_scoped_release>());
  m.def(
      "block_sparse_attention",
      [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t block_q, int64_t block_k,
         const torch::Tensor& offsets, const torch::Tensor& blocks, double scale, bool causal, const OptTensor& q_pos,
         const OptTensor& k_pos, double self_penalty, int64_t window_left, int64_t window_right,
         const std::string& kernel) {
        auto r = longseq::block_sparse_attention(
            q, k, v, sparse_layout(block_q, block_k, offsets, blocks),
            sparse_mask(causal, q_pos, k_pos, self_penalty, window_left, window_right), scale, kernel);
        return std::make_pair(r.out, r.lse);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("block_q"), py::arg("block_k"), py::arg("offsets"),
      py::arg("blocks"), py::arg("scale"), py::arg("causal") = false, py::arg("q_pos") = py::none(),
      py::arg("k_pos") = py::none(), py::arg("self_penalty") = 0.0, py::arg("window_left") = -1,
      py::arg("window_right") = -1, py::arg("kernel") = "auto", py::call_guard<py::gil_scoped_release>());
  m.def(
      "block_sparse_unsupported_reasons",
      [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t block_q, int64_t block_k,
         const torch::Tensor& offsets, const torch::Tensor& blocks, bool causal, const OptTensor& q_pos,
         const OptTensor& k_pos, double self_penalty, int64_t window_left, int64_t window_right) {
        return longseq::block_sparse_attention_unsupported_reasons(
            q, k, v, sparse_layout(block_q, block_k, offsets, blocks),
            sparse_mask(causal, q_pos, k_pos, self_penalty, window_left, window_right));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("block_q"), py::arg("block_k"), py::arg("offsets"),
      py::arg("blocks"), py::arg("causal") = false, py::arg("q_pos") = py::none(), py::arg("k_pos") = py::none(),
      py::arg("self_penalty") = 0.0, py::arg("window_left") = -1, py::arg("window_right") = -1);
  m.def(
      "block_sparse_layout",
      [](int64_t block_q, int64_t block_k, const std::vector<std::vector<std::vector<std::vector<int64_t>>>>& rows) {
        auto l = longseq::block_sparse_layout(block_q, block_k, rows);
        return std::make_pair(l.offsets, l.blocks);
      },
      py::arg("block_q"), py::arg("block_k"), py::arg("rows"));
  m.def(
      "causal_linear_attention",
      [](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v, int64_t chunk, double eps,
         const std::string& kernel) { return longseq::causal_linear_attention(a, b, v, chunk, eps, nullptr, kernel); },
      py::arg("a"), py::arg("b"), py::arg("v"), py::arg("chunk") = 64, py::arg("eps") = 1e-6,
      py::arg("kernel") = "auto", py::call_guard<py::gil_scoped_release>());
  m.def(
      "causal_prefix_products",
      [](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v, int64_t chunk,
         const std::string& kernel) { return longseq::causal_prefix_products(a, b, v, chunk, nullptr, kernel); },
      py::arg("a"), py::arg("b"), py::arg("v"), py::arg("chunk") = 64, py::arg("kernel") = "auto",
      py::call_guard<py::gil_scoped_release>());
  // Transformer-XL's relative attention: qu = q + u, qv = q + v [B, H, T, D]; k, v [B, H, M + T, D]; r [H, R, D].
  m.def(
      "relative_attention",
      [](const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k, const torch::Tensor& v,
         const torch::Tensor& r, int64_t memory, int64_t max_distance, const OptTensor& key_padding,
         const std::string& kernel) {
        return longseq::relative_attention(qu, qv, k, v, r,
                                           longseq::RelativeMask{memory, max_distance, or_undefined(key_padding)},
                                           kernel);
      },
      py::arg("qu"), py::arg("qv"), py::arg("k"), py::arg("v"), py::arg("r"), py::arg("memory") = 0,
      py::arg("max_distance") = -1, py::arg("key_padding") = py::none(), py::arg("kernel") = "auto",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "relative_attention_unsupported_reasons",
      [](const torch::Tensor& qu, const torch::Tensor& qv, const torch::Tensor& k, const torch::Tensor& v,
         const torch::Tensor& r, int64_t memory, int64_t max_distance, const OptTensor& key_padding) {
        return longseq::relative_attention_unsupported_reasons(
            qu, qv, k, v, r, longseq::RelativeMask{memory, max_distance, or_undefined(key_padding)});
      },
      py::arg("qu"), py::arg("qv"), py::arg("k"), py::arg("v"), py::arg("r"), py::arg("memory") = 0,
      py::arg("max_distance") = -1, py::arg("key_padding") = py::none());
  m.def(
      "causal_linear_attention_unsupported_reasons",
      [](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v) {
        return longseq::causal_linear_attention_unsupported_reasons(a, b, v, nullptr);
      },
      py::arg("a"), py::arg("b"), py::arg("v"));
}
