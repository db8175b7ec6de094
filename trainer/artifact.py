"""The hand-over: a trained model as a graph of standard ops plus weights, with no Python in it.

The trainer process runs the variant, so nothing it computes about its own model can be trusted.
What crosses to the scorer is `torch.export` of the model in eval mode at the evaluation's exact
input shape: a graph of ATen ops (a data structure, not code) and tensors. `torch.export.save` /
`load` use pickle ("never load data from an untrusted source"), so the file here is our own:
a zip read with `numpy.load(allow_pickle=False)` holding the graph as torch's serialized JSON and
every tensor as raw bytes. The scorer checks the JSON before torch deserializes any of it, and
the live graph after:

- every operator is an ATen op (or `operator.getitem`): no custom op, no Python callable, no
  higher-order op, so no kernel or code from the variant runs in the scorer;
- no op that reads outside state (`aten.from_file`), draws random numbers, or prints;
- the graph is a pure function: no buffer or input it mutates (a call counter could tell the
  causality check from the evaluation; a graph with in-place ops is made functional here first,
  so such a write shows), one token input of the evaluation's shape, one output.

A model whose forward cannot be exported (data-dependent Python control flow, a custom kernel)
is the trial's `unexportable` outcome, with the exporter's message, not a crash.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "evo-graph-1"
MAX_GRAPH_BYTES = 64 << 20  # the JSON of a 100-layer model is a few MB
# ATen ops that reach outside the graph's inputs or are not functions of them.
FORBIDDEN_OPS = {"from_file", "save", "_print", "set_"}
# Ops whose output is not a function of their inputs: uninitialised memory (a graph could keep
# state in it between calls), unchecked indexing, and random draws.
UNINITIALISED = ("empty", "new_empty", "empty_like", "empty_strided", "empty_permuted", "_unsafe_")
RANDOM_WORDS = ("rand", "rrelu", "_standard_gamma", "_sample_dirichlet", "binomial", "bernoulli", "normal", "multinomial", "poisson", "exponential", "uniform",
                "cauchy", "geometric", "log_normal", "random")
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                               torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64)}


class Refused(Exception):
    """The artifact is not a plain graph of standard ops: the trial is `unexportable`, not scored."""


# ------------------------------------------------------------------------------- trainer side


def export(model: torch.nn.Module, example: torch.Tensor) -> "torch.export.ExportedProgram":
    """`model` in eval mode, traced at `example`'s exact shape (the scorer calls it at no other).
    Under an autocast context the graph expects that autocast when it runs: `save` records it."""
    with torch.no_grad():
        return torch.export.export(model, (example,), strict=False)


def save(ep: "torch.export.ExportedProgram", path: Path, autocast: torch.dtype | None = None) -> None:
    """Write the graph and its tensors; atomic, so a half-written file is never handed over.
    `autocast`: the dtype of the autocast the model was exported under (CUDA's bf16), or None."""
    from torch._export.serde import serialize as serde

    art = serde.serialize(ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for kind, table in (("state", ep.state_dict), ("const", ep.constants)):
        for name, value in table.items():
            if not isinstance(value, torch.Tensor):
                raise Refused(f"constant {name!r} is a {type(value).__name__}, not a tensor")
            key = f"t{len(tensors)}"
            t = value.detach().to("cpu").contiguous()
            tensors[key] = t
            meta[key] = {"kind": kind, "name": name, "dtype": str(t.dtype), "shape": list(t.shape),
                         "parameter": isinstance(value, torch.nn.Parameter)}
    arrays = {k: t.view(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8) for k, t in tensors.items()}
    header = {"format": FORMAT, "tensors": meta, "autocast": str(autocast) if autocast else None}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, graph=np.frombuffer(art.exported_program, np.uint8),
                 header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    tmp.replace(path)


# -------------------------------------------------------------------------------- scorer side


class Graph:
    """A checked, loaded hand-over: call it on a token batch of the exported shape."""

    def __init__(self, ep: "torch.export.ExportedProgram", autocast: torch.dtype | None):
        self.program = ep
        self.autocast = autocast
        self.params = parameter_count(ep)

    def module(self, device: torch.device):
        m = self.program.module(check_guards=False).to(device)
        if self.autocast is None:
            return m

        def run(x):  # the autocast the graph was traced under: its dtype asserts expect it
            with torch.autocast(device.type, dtype=self.autocast):
                return m(x)

        return run


def load(path: Path, example: torch.Tensor, *, max_bytes: int) -> Graph:
    """The graph in `path`, checked op by op before and after torch deserializes it; `example` is a
    token batch of the shape the scorer will call it at."""
    from torch._export.serde import serialize as serde

    path = Path(path)
    if path.stat().st_size > max_bytes:
        raise Refused(f"the model file is {path.stat().st_size / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit")
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
            if total > max_bytes or any(i.compress_type != zipfile.ZIP_STORED for i in z.infolist()):
                raise Refused("the model file is compressed or expands past the size limit")
        with np.load(path, allow_pickle=False) as npz:
            graph = bytes(npz["graph"])
            header = json.loads(bytes(npz["header"]))
            if header.get("format") != FORMAT:
                raise Refused(f"not an evo model file (format {header.get('format')!r})")
            state, consts = {}, {}
            for key, m in header["tensors"].items():
                dtype = _DTYPES.get(m["dtype"])
                if dtype is None:
                    raise Refused(f"tensor {m['name']!r} has unsupported dtype {m['dtype']}")
                raw = torch.from_numpy(np.array(npz[key], dtype=np.uint8, copy=True))
                shape = [int(d) for d in m["shape"]]
                if any(d < 0 for d in shape) or raw.numel() != math.prod(shape) * dtype.itemsize:
                    raise Refused(f"tensor {m['name']!r} holds {raw.numel()} bytes, not its declared shape {shape}")
                t = raw.view(dtype).reshape(shape) if raw.numel() else torch.zeros(shape, dtype=dtype)
                if m["kind"] == "state":
                    state[m["name"]] = torch.nn.Parameter(t, requires_grad=False) if m["parameter"] else t
                else:
                    consts[m["name"]] = t
    except Refused:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise Refused(f"the model file cannot be read: {e}") from e
    if len(graph) > MAX_GRAPH_BYTES:
        raise Refused("the graph is implausibly large")
    try:
        parsed = json.loads(graph)
    except ValueError as e:
        raise Refused(f"the graph is not JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise Refused("the graph is not a serialized program")
    check_serialized(parsed)
    try:
        ep = serde.deserialize(serde.SerializedArtifact(json.dumps(parsed).encode(), state, consts, ((example,), {})))
    except Exception as e:  # a graph torch itself cannot rebuild
        raise Refused(f"the graph cannot be deserialized: {type(e).__name__}: {str(e)[:200]}") from e
    autocast = header.get("autocast")
    if autocast is not None and autocast not in ("torch.bfloat16", "torch.float16"):
        raise Refused(f"unsupported autocast dtype {autocast!r}")
    autocast = _DTYPES[autocast] if autocast else None
    if any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable
           for n in ep.graph.nodes):
        # In-place ops: make the graph functional (here, in trusted code), so that a write to a
        # buffer or an input shows up as a mutation and is refused; a write to a temporary is fine.
        try:
            with torch.autocast(example.device.type, dtype=autocast) if autocast else contextlib.nullcontext():
                ep = ep.run_decompositions({})
        except Exception as e:
            raise Refused(f"the graph cannot be made functional: {type(e).__name__}: {str(e)[:200]}") from e
    check_program(ep, example)
    return Graph(ep, autocast)


def _op_problem(name: str) -> str | None:
    """Why an ATen op name (`add.Tensor`) is not allowed, or None."""
    base = name.split(".")[0]
    if base in FORBIDDEN_OPS or base.rstrip("_") in FORBIDDEN_OPS:
        return f"operator aten.{name} reaches outside the model"
    if base.startswith(UNINITIALISED):
        return f"operator aten.{name} reads uninitialised or unchecked memory (use zeros, full or index)"
    if any(w in base for w in RANDOM_WORDS):
        return f"operator aten.{name} draws random numbers (eval mode must be deterministic)"
    return None


# torch.fx writes node and argument names into Python source it then executes (the module's
# forward): every name must be a plain identifier (dotted for attribute paths), and no other string
# in the file may carry the characters code would need.
_NAME_KEYS = {"name", "parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn",
              "forward_arg_names", "arg_name", "input_name", "output_name"}
_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*)?$")
_SPEC_KEYS = {"in_spec", "out_spec"}  # pytree specs: JSON text, parsed against a registry of types
_CODE_CHARS = re.compile(r"[\n\r'\"()\[\]{};=\\@`$#]")


def _entries(obj, key: str | None = None):
    """Every (dict, key, value) of a JSON tree, depth first; a list's items carry the key of the
    field that holds the list."""
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            yield obj, k, v
            yield from _entries(v, k)
    elif isinstance(obj, list):
        for v in obj:
            if not isinstance(v, (dict, list)):
                yield None, key, v
            yield from _entries(v, key)


def _check_strings(graph: dict) -> None:
    """Field names and names must be identifiers; no other string may carry code characters."""
    for holder, key, value in _entries(graph):
        if holder is not None and not _NAME.match(key):  # field names, and the names keying tensor_values
            raise Refused(f"the graph file has a key {key[:40]!r}, not an identifier")
        if not isinstance(value, str):
            continue
        if key in _NAME_KEYS:
            if not _NAME.match(value):
                raise Refused(f"the graph has a {key} {value[:40]!r}, not an identifier")
        elif key not in _SPEC_KEYS and _CODE_CHARS.search(value):
            raise Refused(f"the graph file's field {key!r} holds {value[:40]!r}")


def check_serialized(graph: dict) -> None:
    """Refuse, from the JSON alone, anything torch's deserializer would turn into code: symbolic
    shape expressions (it parses them with sympy, which evaluates strings) and targets that are
    not ATen ops or getitem. Guard code (Python source the deserializer compiles into the module)
    is dropped: the scorer calls the graph at the one shape it checks itself."""
    symbolic = {key for _, key, _ in _entries(graph)} & {"as_expr", "expr_str"}
    if symbolic or graph.get("range_constraints"):
        raise Refused("the graph has symbolic shapes; it must be exported at the evaluation's fixed shape")
    graph["guards_code"] = []
    for holder, key, value in list(_entries(graph)):
        if key == "metadata" and isinstance(value, dict):  # stack traces, module paths: free text
            holder[key] = {}
    _check_strings(graph)
    for target in sorted({v for _, k, v in _entries(graph) if k == "target" and isinstance(v, str)}):
        if target == "_operator.getitem":
            continue
        if not target.startswith("torch.ops.aten."):
            raise Refused(f"the graph calls {target}, which is not a standard ATen op "
                          "(custom kernels and Python callables cannot be scored)")
        problem = _op_problem(target[len("torch.ops.aten."):])
        if problem:
            raise Refused(problem)


def check_program(ep: "torch.export.ExportedProgram", example: torch.Tensor | None = None) -> None:
    """The live graph: standard ops only, no mutation, one token input and one output."""
    sig = ep.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate:
        names = sorted({*sig.buffers_to_mutate.values(), *sig.user_inputs_to_mutate.values()})
        raise Refused(f"forward mutates {', '.join(names)}: the model must be a pure function of its input")
    if len(sig.user_inputs) != 1 or len(sig.user_outputs) != 1:
        raise Refused(f"forward must take one token tensor and return one logits tensor "
                      f"(got {len(sig.user_inputs)} inputs, {len(sig.user_outputs)} outputs)")
    if example is not None:
        (idx,) = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name == sig.user_inputs[0]]
        val = idx.meta.get("val")
        if val is None or tuple(val.shape) != tuple(example.shape) or val.dtype != torch.long:
            raise Refused(f"the graph takes {tuple(val.shape) if val is not None else '?'} "
                          f"{getattr(val, 'dtype', '')} tokens, not the evaluation's {tuple(example.shape)} long tensor")
    for node in ep.graph.nodes:
        if node.op == "call_module" or node.op == "call_method":
            raise Refused(f"the graph has a {node.op} node ({node.target})")
        if node.op != "call_function":
            continue
        t = node.target
        if t is operator.getitem:
            continue
        if not isinstance(t, torch._ops.OpOverload) or t.namespace != "aten":
            raise Refused(f"the graph calls {t}, which is not a standard ATen op")
        if t._schema.is_mutable:
            raise Refused(f"the graph writes in place (aten.{t._opname}): the model must be a pure function of "
                          "its input (h.finish exports a functional graph)")
        problem = _op_problem(f"{t._opname}.{t._overloadname}")
        if problem:
            raise Refused(problem)
        if "dropout" in t._opname and _arg(node, t, "train", "training", default=True) is not False:
            raise Refused(f"aten.{t._opname} in training mode draws random numbers (export in eval mode)")
        if t._opname == "scaled_dot_product_attention" and _arg(node, t, "dropout_p", default=0.0):
            raise Refused("scaled_dot_product_attention with dropout_p > 0 is not deterministic")


def _arg(node, op, *names, default=None):
    """A call's argument by schema name, positional or keyword."""
    for i, a in enumerate(op._schema.arguments):
        if a.name in names:
            if i < len(node.args):
                return node.args[i]
            return node.kwargs.get(a.name, default)
    return default


def parameter_count(ep: "torch.export.ExportedProgram") -> int:
    """Numbers the handed-over model holds, counted by the scorer (the trainer's count is its word):
    every floating-point parameter, buffer and constant, so weights kept as buffers count too."""
    tensors = [*ep.state_dict.values(), *ep.constants.values()]
    return int(sum(t.numel() for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()))

