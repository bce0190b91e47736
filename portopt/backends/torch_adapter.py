"""torch (CPU and CUDA): writes without autograd, and a correctly rounded sqrt on the CPU.

``torch.sqrt`` on the CPU is not correctly rounded (measured: 1 ulp off on ~0.65% of
elements through MKL VML, sometimes far worse on the first call in a process), so CPU
tensors take NumPy's sqrt, which is, on the same memory.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .base import Adapter, strided_bounds, strides_overlap


def numpy_sqrt_for_cpu_tensor(x: Any) -> Any:
    """``sqrt(x)`` for a CPU tensor through NumPy's correctly rounded ufunc, on the same memory.

    bfloat16 (which NumPy lacks) goes through float32: a correctly rounded float32 root
    rounds to the correctly rounded bfloat16 root (24 >= 2*8 + 2 bits).
    """
    import torch

    if x.dtype == torch.bfloat16:
        return numpy_sqrt_for_cpu_tensor(x.float()).to(torch.bfloat16)
    result = np.sqrt(x.detach().resolve_neg().resolve_conj().numpy())
    return torch.from_numpy(np.asarray(result))


class _DataPointer:
    """A layout watch: the data pointer of one tensor, read when asked."""

    __slots__ = ("_tensor",)

    def __init__(self, tensor: Any) -> None:
        self._tensor = tensor

    @property
    def value(self) -> int:
        return self._tensor.data_ptr()


def _is_zero_tensor(x: Any) -> bool:
    """Whether ``x`` is a ZeroTensor (``torch._efficientzerotensor``): all zeros, no storage,
    ``data_ptr()`` 0 (the method is private; a torch without it has no such tensors)."""
    is_zero = getattr(x, "_is_zerotensor", None)
    return bool(is_zero()) if is_zero is not None else False


def _plain(x: Any) -> bool:
    """Whether ``x``'s elements are its memory, in C order: contiguous, and neither a negative or
    conjugate view (which hold other values than they show) nor a ZeroTensor (no memory)."""
    return x.is_contiguous() and not (x.is_neg() or x.is_conj() or _is_zero_tensor(x))


class TorchAdapter(Adapter):
    name = "torch"

    @classmethod
    def handles(cls, xp: Any) -> bool:
        return array_api_compat.is_torch_namespace(xp)

    def label(self, device: Any) -> str:
        return f"torch-{getattr(device, 'type', device)}"

    def primitive_overrides(self, device: Any) -> dict:
        if getattr(device, "type", str(device)) == "cpu":
            return {"sqrt": numpy_sqrt_for_cpu_tensor}
        return {}

    def device(self, x: Any) -> Any:
        return x.device

    def is_writeable(self, x: Any) -> bool:
        return not x.is_inference()

    def signature(self, x: Any) -> tuple:
        return (type(x), x.shape, x.dtype, x.device, x.layout, x.is_contiguous(), x.is_inference(), x.is_neg(),
                x.is_conj(), _is_zero_tensor(x))

    def address(self, x: Any) -> int | None:
        if x.device.type != "cpu" or not _plain(x):
            return None
        return x.data_ptr()

    def device_address(self, x: Any) -> int | None:
        if x.device.type != "cuda" or not _plain(x):
            return self.address(x)
        return x.data_ptr()

    def planned_address(self, x: Any) -> int | None:
        # the signature holds device, contiguity and the negative and conjugate bits
        return x.data_ptr()

    def stageable(self, x: Any) -> bool:
        import torch

        # a strided view, or a negative view (the copy holds the values it shows); not a
        # ZeroTensor (no memory: the reference path steps it)
        return x.device.type == "cpu" and x.layout == torch.strided and not _is_zero_tensor(x)

    def staged_copy(self, x: Any) -> Any:
        # detached (no autograd record, no grad-mode switch: a third of the time); resolve_neg
        # so that a contiguous negative view is copied too
        return x.detach().resolve_neg().contiguous()

    def layout_watch(self, x: Any) -> Any:
        # with the shape, dtype and contiguity that the signature holds, the data pointer is
        # the layout (set_(), resize_(), as_strided_() and ``.data =`` move it)
        return _DataPointer(x) if x.is_contiguous() else None

    def memory_layout(self, x: Any) -> Any:
        # set_(), resize_() and as_strided_() move a tensor's elements and keep the object
        if x.is_contiguous():
            return x.data_ptr(), x.numel() * x.element_size()
        return x.data_ptr(), tuple(x.shape), x.stride(), x.element_size()

    def memory_bounds(self, x: Any) -> tuple[int, int] | None:
        if _is_zero_tensor(x):  # no memory
            return None
        item = x.element_size()
        if x.is_contiguous():
            start = x.data_ptr()
            return start, start + x.numel() * item
        return strided_bounds(x.data_ptr(), tuple(x.shape), tuple(s * item for s in x.stride()), item)

    def overlaps_itself(self, x: Any) -> bool:
        item = x.element_size()
        return strides_overlap(tuple(x.shape), tuple(s * item for s in x.stride()), item)

    def share_memory(self, a: Any, b: Any) -> bool:
        if a is b:
            return True
        bounds_a, bounds_b = self.memory_bounds(a), self.memory_bounds(b)
        if bounds_a is None or bounds_b is None or bounds_a[0] >= bounds_b[1] or bounds_b[0] >= bounds_a[1]:
            return False
        if a.device.type == "cpu" and not (a.is_neg() or a.is_conj() or b.is_neg() or b.is_conj()):
            return bool(np.shares_memory(_host_view(a), _host_view(b)))  # exact on the host
        return True  # overlapping ranges on a device: counted as shared

    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        import torch

        return torch.empty(shape, dtype=dtype, device=device)

    def multiply_into(self, x: Any, factor: Any) -> None:
        import torch

        with torch.no_grad():
            x.mul_(factor)

    def write(self, destination: Any, source: Any) -> None:
        import torch

        if not source.requires_grad:  # the same write, into the same memory, without a grad-mode switch
            destination.detach().copy_(source)
            return
        with torch.no_grad():
            destination.copy_(source)

    def flat_host_view(self, x: Any, writeable: bool) -> np.ndarray | None:
        """CPU tensors share their memory with NumPy (``.numpy()``); bfloat16 has no NumPy dtype."""
        import torch

        if x.device.type != "cpu" or not _plain(x) or x.dtype not in (torch.float16, torch.float32, torch.float64):
            return None
        return x.detach().numpy().reshape(-1)

    def to_numpy(self, x: Any) -> np.ndarray:
        import torch

        x = x.detach().resolve_neg().resolve_conj()
        if x.dtype == torch.bfloat16:
            # NumPy has no bfloat16: hand back the bit patterns as uint16.
            return x.view(torch.int16).cpu().numpy().view(np.uint16).copy()
        return x.cpu().numpy().copy()

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        import torch

        return torch.from_numpy(np.array(array, copy=True)).to(device=device or "cpu")

    def bfloat16_from_bits(self, bits: np.ndarray, device: Any = None) -> Any:
        import torch

        return torch.from_numpy(np.array(bits, dtype=np.uint16, copy=True).view(np.int16)).view(
            torch.bfloat16).to(device=device or "cpu")


def _host_view(x: Any) -> np.ndarray:
    """A NumPy view of a CPU tensor's own memory; bfloat16 (which NumPy lacks) as its 16-bit patterns."""
    import torch

    x = x.detach()
    return (x.view(torch.int16) if x.dtype == torch.bfloat16 else x).numpy()
