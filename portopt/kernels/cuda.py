"""CUDA source for one fused step of a rule, generated from its traced kernel.

Every floating-point operation is inline PTX with explicit round-to-nearest and no ``.ftz``
(``add.rn.f32``, ``mul.rn.f32``, ``div.rn.f32``, ``sqrt.rn.f32``, comparisons by ``setp``
without ``.ftz``, and the ``.f64`` forms), so neither ``--fmad=true`` (NVRTC's and nvcc's
default contraction into FMA) nor ``-ftz=true`` (which CuPy passes to every compile) can
change a bit. float16 parameters are loaded and stored with explicit ``cvt`` and computed in
float32. Two kernels: one array in a grid-stride loop (:func:`cuda_source`), and every leaf of
a group in one launch from a table of addresses (:func:`cuda_table_source`).

Status: every kernel compiles with NVRTC under CuPy's flags on any machine (no GPU needed:
:mod:`portopt.kernels.nvrtc`; tests/test_cuda_source.py inspects the PTX for FMA, ``.ftz`` and
``.approx``), and the same source, its helpers made IEEE C++ (``target="host"``), runs on the
CPU with NumPy's bits (:mod:`portopt.kernels.host_shim`). Launching it from CuPy or torch needs a
GPU and is not verified yet (docs/gpu.md).
"""

from __future__ import annotations

from collections.abc import Callable

from .trace import ARITHMETIC, COMPARISONS, Graph, Node, trace

__all__ = ["cuda_source", "cuda_table_source", "KERNEL_NAME", "TABLE_KERNEL_NAME"]

KERNEL_NAME = "portopt_step"
TABLE_KERNEL_NAME = "portopt_table_step"

_PTX_OP = {"add": "add.rn", "sub": "sub.rn", "mul": "mul.rn", "div": "div.rn"}
_SETP = {"lt": "lt", "le": "le", "gt": "gt", "ge": "ge", "eq": "eq", "ne": "neu"}  # ne is true for NaN


def _helpers(ctype: str, suffix: str, reg: str) -> str:
    """Inline-PTX device functions for one compute type (float / f32 or double / f64)."""
    lines = []
    for op, ptx in _PTX_OP.items():
        lines.append(
            f"__device__ __forceinline__ {ctype} {op}_{suffix}({ctype} a, {ctype} b) "
            f"{{ {ctype} r; asm(\"{ptx}.{suffix} %0, %1, %2;\" : \"={reg}\"(r) : \"{reg}\"(a), \"{reg}\"(b)); return r; }}"
        )
    lines.append(
        f"__device__ __forceinline__ {ctype} sqrt_{suffix}({ctype} a) "
        f"{{ {ctype} r; asm(\"sqrt.rn.{suffix} %0, %1;\" : \"={reg}\"(r) : \"{reg}\"(a)); return r; }}"
    )
    lines.append(
        f"__device__ __forceinline__ {ctype} neg_{suffix}({ctype} a) "
        f"{{ {ctype} r; asm(\"neg.{suffix} %0, %1;\" : \"={reg}\"(r) : \"{reg}\"(a)); return r; }}"
    )
    lines.append(
        f"__device__ __forceinline__ {ctype} abs_{suffix}({ctype} a) "
        f"{{ {ctype} r; asm(\"abs.{suffix} %0, %1;\" : \"={reg}\"(r) : \"{reg}\"(a)); return r; }}"
    )
    for op, cmp in _SETP.items():
        lines.append(
            f"__device__ __forceinline__ bool {op}_{suffix}({ctype} a, {ctype} b) {{ unsigned r; "
            f"asm(\"{{ .reg .pred p; setp.{cmp}.{suffix} p, %1, %2; selp.u32 %0, 1, 0, p; }}\" "
            f": \"=r\"(r) : \"{reg}\"(a), \"{reg}\"(b)); return r != 0; }}"
        )
    bits = "__float_as_uint(a) >> 31" if suffix == "f32" else "(unsigned long long)__double_as_longlong(a) >> 63"
    lines.append(f"__device__ __forceinline__ bool signbit_{suffix}({ctype} a) {{ return ({bits}) != 0; }}")
    return "\n".join(lines)


_HALF = {"f16": """
__device__ __forceinline__ float load_f16(unsigned short h) { float r; asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h)); return r; }
__device__ __forceinline__ unsigned short store_f16(float f) { unsigned short r; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f)); return r; }
""", "bf16": """
__device__ __forceinline__ float load_bf16(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ unsigned short store_bf16(float f) {
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned short)((u >> 16) | 0x0040u);
    return (unsigned short)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
"""}


def _expression(node: Node, name: Callable[[Node], str], suffix: str) -> str:
    a = [name(arg) for arg in node.args]
    op = node.op
    if op in ARITHMETIC:
        return f"{op}_{suffix}({a[0]}, {a[1]})"
    if op in COMPARISONS:
        return f"{op}_{suffix}({a[0]}, {a[1]})"
    if op == "and":
        return f"({a[0]} && {a[1]})"
    if op == "or":
        return f"({a[0]} || {a[1]})"
    if op in ("neg", "sqrt", "abs", "signbit"):
        return f"{op}_{suffix}({a[0]})"
    if op == "where":
        return f"({a[0]} ? {a[1]} : {a[2]})"
    if op == "maximum":
        return (f"((gt_{suffix}({a[0]}, {a[1]}) || ne_{suffix}({a[0]}, {a[0]}) || "
                f"(eq_{suffix}({a[0]}, {a[1]}) && signbit_{suffix}({a[1]}))) ? {a[0]} : {a[1]})")
    if op == "minimum":
        return (f"((lt_{suffix}({a[0]}, {a[1]}) || ne_{suffix}({a[0]}, {a[0]}) || "
                f"(eq_{suffix}({a[0]}, {a[1]}) && signbit_{suffix}({a[0]}))) ? {a[0]} : {a[1]})")
    raise TypeError(f"no CUDA code for traced operation {op!r}")


def _is_boolean(node: Node) -> bool:
    return node.op in COMPARISONS or node.op in ("and", "or", "signbit")


class _Types:
    """C types of one kernel: compute type, its PTX suffix and register letter, storage of p and g."""

    def __init__(self, param_dtype: str) -> None:
        compute = {"float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float64"}[param_dtype]
        self.ctype, self.suffix, self.reg = ("float", "f32", "f") if compute == "float32" else ("double", "f64", "d")
        # 16-bit params: stored as their bits, converted on load and store
        self.half = {"float16": "f16", "bfloat16": "bf16"}.get(param_dtype)
        self.storage = "unsigned short" if self.half else self.ctype


def _body(graph: Graph, types: _Types, read: Callable[[str], str], write: Callable[[str], str],
          indent: str) -> list[str]:
    """One element's statements: inputs read with ``read(name)``, outputs assigned to ``write(name)``."""
    def name(node: Node) -> str:
        return f"s_{node.name}" if node.op == "scalar" else f"v{node.index}"

    body = []
    for node in graph.nodes:
        if node.op == "input":
            load = read(str(node.name))
            if types.half and node.name in ("p", "g"):
                load = f"load_{types.half}({load})"
            body.append(f"{indent}const {types.ctype} v{node.index} = {load};")
        elif node.op != "scalar":
            kind = "bool" if _is_boolean(node) else types.ctype
            if node.op == "round_param":  # to the params' storage and back
                value = name(node.args[0])
                expression = f"load_{types.half}(store_{types.half}({value}))" if types.half else value
            else:
                expression = _expression(node, name, types.suffix)
            body.append(f"{indent}const {kind} v{node.index} = {expression};")
    targets = ["p"] + [f"slot{i}" for i in range(len(graph.arrays) - 2)]
    for target, output in zip(targets, graph.outputs):
        value = name(output)
        if types.half and target == "p":
            value = f"store_{types.half}({value})"
        body.append(f"{indent}{write(target)} = {value};")
    return body


def _prelude(types: _Types, target: str) -> list[str]:
    helpers = _helpers(types.ctype, types.suffix, types.reg) if target == "device" else \
        _host_helpers(types.ctype, types.suffix)
    half = (_HALF if target == "device" else _HOST_HALF)[types.half] if types.half else ""
    return ["// Generated by portopt.kernels.cuda from the rule's traced kernel. Do not edit.", helpers, half]


def cuda_source(kernel: Callable, host_values: tuple, slot_count: int, param_dtype: str,
                kernel_name: str = KERNEL_NAME, target: str = "device") -> str:
    """The CUDA C source of ``portopt_step(p, g, slots..., scalars..., n)`` for ``param_dtype``.

    float16 params (and grads) are passed as ``unsigned short`` bit patterns, slots as float32.
    ``target="host"``: the same statements as C++ for the CPU (:func:`host_shim`), each PTX
    helper an IEEE C++ operation, to run the generated source where there is no GPU.
    """
    types = _Types(param_dtype)
    graph: Graph = trace(kernel, host_values, slot_count)
    parameters = [f"{types.storage}* __restrict__ p", f"const {types.storage}* __restrict__ g"]
    parameters += [f"{types.ctype}* __restrict__ slot{i}" for i in range(slot_count)]
    parameters += [f"const {types.ctype} s_{scalar}" for scalar in graph.scalar_names]
    parameters.append("const long long n")
    body = _body(graph, types, lambda name: f"{name}[i]", lambda name: f"{name}[i]", "        ")
    loop = ("    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;\n"
            "         i += (long long)blockDim.x * gridDim.x) {") if target == "device" else \
        "    for (long long i = 0; i < n; ++i) {"
    qualifier = "__global__ " if target == "device" else ""
    return "\n".join([*_prelude(types, target), f'extern "C" {qualifier}void {kernel_name}({", ".join(parameters)}) {{',
                      loop, *body, "    }", "}", ""])


def cuda_table_source(kernel: Callable, host_values: tuple, slot_count: int, param_dtype: str,
                      kernel_name: str = TABLE_KERNEL_NAME, in_place: bool = True, target: str = "device") -> str:
    """The multi-tensor kernel: one launch for every leaf of a group, as the CPU table loop.

    ``portopt_table_step(read, write, chunk_leaf, chunk_start, chunk_stop, chunks, leaves,
    scalars)``: ``read`` holds the addresses of p, g and the slots of each leaf (row-major,
    ``(2 + slots) x leaves``), ``write`` those of p and the slots to write (unused in place:
    the outputs go where they were read); the chunks cut the leaves into pieces; one block per
    chunk (a grid-stride loop over chunks), its threads over the chunk's elements; the scalars
    are one array, in the trace's order.
    """
    types = _Types(param_dtype)
    graph: Graph = trace(kernel, host_values, slot_count)
    inputs = [str(node.name) for node in graph.arrays]
    outputs = inputs[:1] + inputs[2:]
    qualifier = "__global__ " if target == "device" else ""
    parameters = ["const long long* __restrict__ read", "const long long* __restrict__ write",
                  "const long long* __restrict__ chunk_leaf", "const long long* __restrict__ chunk_start",
                  "const long long* __restrict__ chunk_stop", "const long long chunks", "const long long leaves",
                  f"const {types.ctype}* __restrict__ scalars"]
    lines = [*_prelude(types, target), f'extern "C" {qualifier}void {kernel_name}({", ".join(parameters)}) {{']
    lines += [f"    const {types.ctype} s_{scalar} = scalars[{k}];" for k, scalar in enumerate(graph.scalar_names)]
    if target == "device":
        lines += ["    for (long long c = blockIdx.x; c < chunks; c += gridDim.x) {"]
    else:
        lines += ["    for (long long c = 0; c < chunks; ++c) {"]
    lines += ["        const long long j = chunk_leaf[c];"]
    for k, name in enumerate(inputs):
        kind = types.storage if name in ("p", "g") else types.ctype
        lines.append(f"        {'const ' if name == 'g' else ''}{kind}* r_{name} = ({kind}*)read[{k} * leaves + j];")
    for k, name in enumerate(outputs):
        kind = types.storage if name == "p" else types.ctype
        source = f"r_{name}" if in_place else f"({kind}*)write[{k} * leaves + j]"
        lines.append(f"        {kind}* w_{name} = {source};")
    if target == "device":
        lines += ["        for (long long i = chunk_start[c] + threadIdx.x; i < chunk_stop[c]; i += blockDim.x) {"]
    else:
        lines += ["        for (long long i = chunk_start[c]; i < chunk_stop[c]; ++i) {"]
    lines += _body(graph, types, lambda name: f"r_{name}[i]", lambda name: f"w_{name}[i]", "            ")
    lines += ["        }", "    }", "}", ""]
    return "\n".join(lines)


def _host_helpers(ctype: str, suffix: str) -> str:
    """The PTX helpers as C++ on the host: each one IEEE operation (compile with -ffp-contract=off)."""
    lines = []  # compiler builtins, no headers: the source may sit inside a namespace
    for op, symbol in (("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/")):
        lines.append(f"static inline {ctype} {op}_{suffix}({ctype} a, {ctype} b) {{ return a {symbol} b; }}")
    root, absolute = ("__builtin_sqrtf", "__builtin_fabsf") if ctype == "float" else ("__builtin_sqrt", "__builtin_fabs")
    lines.append(f"static inline {ctype} sqrt_{suffix}({ctype} a) {{ return {root}(a); }}")
    lines.append(f"static inline {ctype} neg_{suffix}({ctype} a) {{ return -a; }}")
    lines.append(f"static inline {ctype} abs_{suffix}({ctype} a) {{ return {absolute}(a); }}")
    for op, symbol in (("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">="), ("eq", "=="), ("ne", "!=")):
        lines.append(f"static inline bool {op}_{suffix}({ctype} a, {ctype} b) {{ return a {symbol} b; }}")
    lines.append(f"static inline bool signbit_{suffix}({ctype} a) {{ return __builtin_signbit(a) != 0; }}")
    return "\n".join(lines)


_HOST_HALF = {"f16": """
static inline float load_f16(unsigned short h) { _Float16 x; __builtin_memcpy(&x, &h, 2); return (float)x; }
static inline unsigned short store_f16(float f) { _Float16 x = (_Float16)f; unsigned short h; __builtin_memcpy(&h, &x, 2); return h; }
""", "bf16": """
static inline float load_bf16(unsigned short h) { unsigned u = ((unsigned)h) << 16; float f; __builtin_memcpy(&f, &u, 4); return f; }
static inline unsigned short store_bf16(float f) {
    unsigned u; __builtin_memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned short)((u >> 16) | 0x0040u);
    return (unsigned short)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
"""}
