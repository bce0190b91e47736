"""Benchmark workloads: one large tensor, and a model-like tree of ResNet-50's parameter shapes."""

from __future__ import annotations


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


WORKLOADS = {
    "1e7 float32": ([(10_000_000,)], "float32"),
    "resnet50 float32": (resnet50_shapes(), "float32"),
    "1e7 float64": ([(10_000_000,)], "float64"),
    "1e7 float16": ([(10_000_000,)], "float16"),
}
