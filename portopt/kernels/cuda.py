"""CUDA source for one fused step of a rule, generated from its traced kernel.

Every floating-point operation is inline PTX with explicit round-to-nearest and no ``.ftz``
(``add.rn.f32``, ``mul.rn.f32``, ``div.rn.f32``, ``sqrt.rn.f32``, comparisons by ``setp``
without ``.ftz``, and the ``.f64`` forms), so neither ``--fmad=true`` (NVRTC's and nvcc's
default contraction into FMA) nor ``-ftz=true`` (which CuPy passes to every compile) can
change a bit. float16 parameters are loaded and stored with explicit ``cvt`` and computed in
float32. One thread per element in a grid-stride loop.

Status: the source compiles with nvcc (tests/test_cuda_source.py inspects the PTX for FMA
and ``.ftz``); launching it from CuPy or torch needs a GPU and is not verified yet (docs/gpu.md).
"""

from __future__ import annotations

from collections.abc import Callable

from .trace import ARITHMETIC, COMPARISONS, Graph, Node, trace

__all__ = ["cuda_source", "KERNEL_NAME"]

KERNEL_NAME = "portopt_step"

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


_HALF = """
__device__ __forceinline__ float load_f16(unsigned short h) { float r; asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h)); return r; }
__device__ __forceinline__ unsigned short store_f16(float f) { unsigned short r; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f)); return r; }
"""


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


def cuda_source(kernel: Callable, host_values: tuple, slot_count: int, param_dtype: str,
                kernel_name: str = KERNEL_NAME) -> str:
    """The CUDA C source of ``portopt_step(p, g, slots..., scalars..., n)`` for ``param_dtype``.

    float16 params (and grads) are passed as ``unsigned short`` bit patterns, slots as float32.
    """
    compute = {"float16": "float32", "float32": "float32", "float64": "float64"}[param_dtype]
    ctype, suffix, reg = ("float", "f32", "f") if compute == "float32" else ("double", "f64", "d")
    graph: Graph = trace(kernel, host_values, slot_count)
    half = param_dtype == "float16"
    storage = "unsigned short" if half else ctype

    def name(node: Node) -> str:
        return f"s_{node.name}" if node.op == "scalar" else f"v{node.index}"

    parameters = [f"{storage}* __restrict__ p", f"const {storage}* __restrict__ g"]
    parameters += [f"{ctype}* __restrict__ slot{i}" for i in range(slot_count)]
    parameters += [f"const {ctype} s_{scalar}" for scalar in graph.scalar_names]
    parameters.append("const long long n")
    body = []
    for node in graph.nodes:
        if node.op == "input":
            load = f"{node.name}[i]"
            if half and node.name in ("p", "g"):
                load = f"load_f16({load})"
            body.append(f"        const {ctype} v{node.index} = {load};")
        elif node.op != "scalar":
            kind = "bool" if _is_boolean(node) else ctype
            body.append(f"        const {kind} v{node.index} = {_expression(node, name, suffix)};")
    targets = ["p"] + [f"slot{i}" for i in range(slot_count)]
    for target, output in zip(targets, graph.outputs):
        value = name(output)
        if half and target == "p":
            value = f"store_f16({value})"
        body.append(f"        {target}[i] = {value};")
    return "\n".join([
        "// Generated by portopt.kernels.cuda from the rule's traced kernel. Do not edit.",
        _helpers(ctype, suffix, reg),
        _HALF if half else "",
        f'extern "C" __global__ void {kernel_name}({", ".join(parameters)}) {{',
        "    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;",
        "         i += (long long)blockDim.x * gridDim.x) {",
        *body,
        "    }",
        "}",
        "",
    ])
