"""Benchmark workloads: large tensors, a model-like tree of ResNet-50's parameter shapes, and
small problems (a scientist's few parameters, many small leaves) where per-step overhead counts."""

from __future__ import annotations

from dataclasses import dataclass


def resnet50_shapes() -> list[tuple[int, ...]]:
    """The 161 parameter shapes of torchvision's ResNet-50 (25,557,032 parameters)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,),
                       (planes, planes, 3, 3), (planes,), (planes,),
                       (planes * 4, planes, 1, 1), (planes * 4,), (planes * 4,)]
            if block == 0:
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    return shapes + [(1000, 2048), (1000,)]


# A small MLP (32 inputs, two hidden layers of 64, one output): the shapes of its parameters.
MLP_SHAPES = [(64, 32), (64,), (64, 64), (64,), (1, 64), (1,)]


@dataclass(frozen=True)
class Workload:
    shapes: list[tuple[int, ...]]
    dtype: str
    tree: str = "list"  # how the leaves are held: a list, or a dict
    small: bool = False  # timed in batches of `repeat` steps, compared with a hand-written loop
    repeat: int = 1
    clipping: bool = False  # times clip_grad_norm_ instead of a rule's step
    state_dtype: str | None = None  # portopt's state_dtype (torch's fused step keeps the params' dtype)
    master_weights: str | None = None  # portopt's master_weights ("kahan": torch-optimi's kahan_sum beside it)


WORKLOADS = {
    "1e7 float32": Workload([(10_000_000,)], "float32"),
    "resnet50 float32": Workload(resnet50_shapes(), "float32"),
    "1e7 float64": Workload([(10_000_000,)], "float64"),
    "1e7 float16": Workload([(10_000_000,)], "float16"),
    "1e7 float16, float16 state": Workload([(10_000_000,)], "float16", state_dtype="float16"),
    "1e7 bfloat16": Workload([(10_000_000,)], "bfloat16"),
    "1e7 bfloat16, bfloat16 state": Workload([(10_000_000,)], "bfloat16", state_dtype="bfloat16"),
    "1e7 bfloat16, bfloat16 state, kahan": Workload([(10_000_000,)], "bfloat16", state_dtype="bfloat16",
                                                    master_weights="kahan"),
    "4 float64": Workload([(4,)], "float64", small=True, repeat=200),
    "dict of four 0-d float64": Workload([(), (), (), ()], "float64", tree="dict", small=True, repeat=200),
    "100 leaves x 50 float64": Workload([(50,)] * 100, "float64", small=True, repeat=20),
    "clip resnet50 float32": Workload(resnet50_shapes(), "float32", clipping=True),
    "clip small MLP float32": Workload(MLP_SHAPES, "float32", clipping=True),
}
