"""The plain array-API adapter; backend adapters override only what differs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from portopt.numerics import RuleNamespace


class Adapter:
    """Behaviour of a backend that follows the array API standard and nothing more.

    ``xp`` is the namespace ``array_api_compat.array_namespace`` returned for the arrays.
    """

    name = "array-api"

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    @classmethod
    def handles(cls, xp: Any) -> bool:
        return True

    def label(self, device: Any) -> str:
        """Backend and device in a few words, e.g. 'torch-cpu'."""
        return getattr(self.xp, "__name__", self.name)

    def rule_namespace(self, device: Any) -> RuleNamespace:
        """The namespace the rules compute with on ``device``: every primitive correctly rounded."""
        return RuleNamespace(self.xp, self.primitive_overrides(device))

    def primitive_overrides(self, device: Any) -> dict:
        """Functions of this backend that are not correctly rounded, replaced. None here."""
        return {}

    def device(self, x: Any) -> Any:
        return array_api_compat.device(x)

    def is_writeable(self, x: Any) -> bool:
        try:
            return bool(array_api_compat.is_writeable_array(x))
        except TypeError:
            return False

    def signature(self, x: Any) -> tuple:
        """What a cached step plan re-checks on every step, cheaply: anything a full check
        looks at (type, shape, dtype, device, writeability). Equal signatures mean the
        full check would pass again."""
        return (type(x), tuple(x.shape), x.dtype, array_api_compat.device(x), self.is_writeable(x))

    def address(self, x: Any) -> int | None:
        """The address of ``x``'s elements if they are host memory in C order with no
        pending view transform (the compiled loops read and write there), else None."""
        return None

    def device_address(self, x: Any) -> int | None:
        """:meth:`address`, or for an array in GPU memory its device address under the same
        conditions (the generated CUDA table kernel's operand), else None."""
        return self.address(x)

    def planned_address(self, x: Any) -> int | None:
        """:meth:`address` of an array whose signature this step matched to a plan's that had
        an address (so what ``address`` checks besides the pointer is known to hold)."""
        return self.address(x)

    def planned_addresses(self, arrays: Sequence[Any]) -> np.ndarray:
        """:meth:`planned_address` of each of ``arrays`` (every one planned to have an address),
        as int64: the address table of one compiled call in one go."""
        addresses = [self.planned_address(x) for x in arrays]
        if None in addresses:
            raise RuntimeError("portopt internal error: a planned array has no address")
        return np.array(addresses, dtype=np.int64)

    def stageable(self, x: Any) -> bool:
        """Whether ``x``, an array with no :meth:`address` (a strided view), can be stepped by
        the compiled loop through :meth:`staged_copy`: a C-order copy read, and for a written
        array written back, around the loop (same bits: the kernel is elementwise)."""
        return False

    def staged_copy(self, x: Any) -> Any:
        """A new C-order array with ``x``'s elements and an :meth:`address` (``x``: an array
        :meth:`stageable` said yes to)."""
        raise NotImplementedError(f"{self.name} arrays are not staged for the compiled loop")

    def layout_watch(self, x: Any) -> Any:
        """An object whose ``.value`` reads, cheaply, what determines where the elements of this
        very object ``x`` lie while its signature (:meth:`signature`) stays the same, or None
        (then :meth:`memory_layout` is compared). A plan reads it at every step."""
        return None

    def memory_layout(self, x: Any) -> Any:
        """Where ``x``'s elements lie, as a value that is equal for two arrays exactly when they
        occupy the same bytes in the same order (first address and size if contiguous, else also
        shape and strides), or None if this backend cannot tell (then only identity can show
        that an array a plan checked is still where it was)."""
        return None

    def memory_bounds(self, x: Any) -> tuple[int, int] | None:
        """``(first byte, one past the last byte)`` of ``x``'s elements, or None if this
        backend cannot tell (then only identity shows that two arrays share memory)."""
        return None

    def overlaps_itself(self, x: Any) -> bool:
        """Whether two elements of ``x`` share memory (a zero or overlapping stride): such an
        array cannot be updated in place. False where this backend cannot tell."""
        return False

    def share_memory(self, a: Any, b: Any) -> bool:
        """Whether ``a`` and ``b`` share an element's memory (exactly, where this backend can
        tell; otherwise whether they are the same array)."""
        return a is b

    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        """A new uninitialised array (the outputs of ``update``)."""
        return self.xp.empty(shape, dtype=dtype, device=device)

    def write(self, destination: Any, source: Any) -> None:
        """Copy ``source`` into ``destination``'s memory, wherever it lives (views too)."""
        destination[...] = source

    def multiply_into(self, x: Any, factor: Any) -> None:
        """``x *= factor`` in ``x``'s memory: one correctly rounded product per element, as
        ``x * factor``; ``factor`` a 0-d array of ``x``'s dtype."""
        self.write(x, x * factor)

    def flat_host_view(self, x: Any, writeable: bool) -> np.ndarray | None:
        """A flat NumPy view of ``x``'s own memory for the CPU fast paths, or None if there is none."""
        return None

    def to_numpy(self, x: Any) -> np.ndarray:
        """A host NumPy copy of ``x`` with the same bits: the buffer protocol or ``__array__``,
        else DLPack (from the host device if the array can move there), else a dense copy
        (``todense()``, as sparse arrays offer). Raises TypeError naming what is missing."""
        return host_copy(x)

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        """A copy of ``array`` on this backend and ``device``, same bits (never sharing memory)."""
        array = np.array(array, copy=True)
        return self.xp.asarray(array, device=device) if device is not None else self.xp.asarray(array)

    def bfloat16_from_bits(self, bits: np.ndarray, device: Any = None) -> Any:
        """A bfloat16 array of this backend from its uint16 bit patterns (NumPy: ml_dtypes')."""
        from ..numerics import host_dtype

        # np.array, not np.ascontiguousarray: that makes a 0-d array 1-d
        return self.from_numpy(np.array(bits, order="C").view(host_dtype("bfloat16")), device)


def strided_bounds(start: int, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """The byte range a strided array spans (``strides`` in bytes; an empty array spans nothing)."""
    if any(n == 0 for n in shape):
        return start, start
    low = start + sum(s * (n - 1) for n, s in zip(shape, strides) if s < 0)
    high = start + sum(s * (n - 1) for n, s in zip(shape, strides) if s > 0) + itemsize
    return low, high


def strides_overlap(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    """Whether some two elements of a strided array are at one address. The test is the
    usual sufficient one (each stride, smallest first, steps over everything the smaller
    ones span); the rare interleaved layouts it cannot clear count as overlapping."""
    if any(n == 0 for n in shape):
        return False  # no elements
    extent = itemsize
    for n, stride in sorted(((n, abs(s)) for n, s in zip(shape, strides) if n > 1), key=lambda pair: pair[1]):
        if stride < extent:
            return True
        extent = stride * n
    return False


def host_copy(x: Any) -> np.ndarray:
    """See :meth:`Adapter.to_numpy`."""
    attempts = []
    candidates = [x]
    if hasattr(x, "to_device"):
        try:
            candidates.append(x.to_device("cpu"))
        except Exception as error:  # noqa: BLE001 - a library's own refusal, recorded below
            attempts.append(f"to_device('cpu') raised {type(error).__name__}")
    for candidate in candidates:
        if hasattr(candidate, "__array__") or _has_buffer(candidate):
            try:
                array = np.array(candidate, copy=True)
                if array.dtype != object:
                    return array
                attempts.append("__array__ gave Python objects")
            except Exception as error:  # noqa: BLE001
                attempts.append(f"__array__ raised {type(error).__name__}")
        if hasattr(candidate, "__dlpack__"):
            try:
                return np.array(np.from_dlpack(candidate), copy=True)
            except Exception as error:  # noqa: BLE001
                attempts.append(f"__dlpack__ raised {type(error).__name__}")
    if hasattr(x, "todense"):
        try:
            return host_copy(x.todense())
        except Exception as error:  # noqa: BLE001
            attempts.append(f"todense() raised {type(error).__name__}")
    tried = "; ".join(attempts) or "it has neither __array__, the buffer protocol, __dlpack__ nor todense()"
    raise TypeError(f"portopt cannot read the values of a {type(x).__module__}.{type(x).__name__} array on the "
                    f"host ({tried})")


def _has_buffer(x: Any) -> bool:
    try:
        memoryview(x)
    except TypeError:
        return False
    return True
