"""From a NumPy loop to Dask: a robust per-pixel background under outliers, fitted with Adam.

Each pixel's background ``theta`` minimises ``sum_t log(1 + (theta - y_t)^2)`` over T noisy
frames with outliers (cosmic-ray hits), a Cauchy loss that ignores them where a mean would
not. The loop is written once against the array API: with NumPy frames it runs in memory;
with Dask frames (chunked, possibly larger than memory, on a cluster) the *same* loop runs
chunk by chunk, and ``compute()`` gives NumPy's bits. What changes for Dask:

    frames = [da.from_array(f, chunks=CHUNKS) for f in frames]     # or da.from_zarr(...)
    theta = da.from_array(theta, chunks=CHUNKS)
    ... every k steps: theta, state.slots = dask.persist(theta, state.slots)

    python examples/dask_scaling.py [--size 1024] [--frames 12] [--steps 150] [--chunk 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import array_api_compat
import numpy as np

import portopt


def make_frames(size: int, count: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """A smooth background, Gaussian noise, and 3% of pixels per frame hit by a large outlier."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(0.0, 1.0, size)
    background = (2.0 + np.sin(3.0 * axis)[:, None] * np.cos(2.0 * axis)[None, :]).astype(np.float32)
    frames = []
    for _ in range(count):
        frame = background + 0.1 * rng.standard_normal((size, size)).astype(np.float32)
        hits = rng.random((size, size)) < 0.03
        frames.append(np.where(hits, frame + rng.uniform(5.0, 50.0, (size, size)).astype(np.float32), frame))
    return frames, background


def cauchy_gradient(theta: Any, frames: list) -> Any:
    """``d/dtheta sum_t log(1 + r_t^2) / 2 = sum_t r_t / (1 + r_t^2)``, r_t = theta - y_t, summed in frame
    order with IEEE operations only (so NumPy and Dask agree bit for bit)."""
    xp = array_api_compat.array_namespace(theta)
    one = xp.asarray(1.0, dtype=theta.dtype)
    total = xp.zeros_like(theta)
    for frame in frames:
        r = theta - frame
        total = total + r / (one + r * r)
    return total


def fit(frames: list, theta: Any, steps: int, persist_every: int = 0) -> Any:
    """The training loop: identical for NumPy and Dask except the optional persist."""
    rule = portopt.Adam(lr=0.05)
    state = rule.init(theta)
    for step in range(steps):
        theta, state = rule.update(theta, cauchy_gradient(theta, frames), state)
        if persist_every and step % persist_every == persist_every - 1:
            import dask

            theta, state.slots = dask.persist(theta, state.slots)  # keeps the graph short
    return theta


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="local Dask worker processes (0: threads only)")
    args = parser.parse_args(argv)

    import dask.array as da

    frames, background = make_frames(args.size, args.frames)
    start = np.median(np.stack(frames), axis=0).astype(np.float32)  # a robust first guess

    began = time.perf_counter()
    numpy_theta = fit(frames, start.copy(), args.steps)
    numpy_seconds = time.perf_counter() - began

    chunks = (args.chunk, args.chunk)
    dask_frames = [da.from_array(f, chunks=chunks) for f in frames]
    client = cluster = None
    if args.workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None,
                               host="127.0.0.1")
        client = Client(cluster)
    try:
        import dask

        dask_frames = list(dask.persist(*dask_frames))  # the data lives on the workers from here on
        began = time.perf_counter()
        lazy = fit(dask_frames, da.from_array(start.copy(), chunks=chunks), args.steps, persist_every=10)
        dask_theta = lazy.compute()
        dask_seconds = time.perf_counter() - began
    finally:
        if client is not None:
            client.close()
            cluster.close()

    same = dask_theta.tobytes() == numpy_theta.tobytes()
    mean_error = float(np.median(np.abs(np.mean(np.stack(frames), axis=0) - background)))
    fit_error = float(np.median(np.abs(numpy_theta - background)))
    print(f"{args.size}x{args.size} pixels, {args.frames} frames, {args.steps} Adam steps")
    print(f"NumPy: {numpy_seconds:.1f} s; Dask ({len(dask_frames[0].chunks[0]) ** 2} chunks, "
          f"{args.workers or 'no'} worker processes): {dask_seconds:.1f} s")
    print(f"Dask result has NumPy's bits: {same}")
    print(f"median |error| vs the true background: Cauchy fit {fit_error:.4f}, plain mean {mean_error:.4f}")
    return {"same_bits": same, "fit_error": fit_error, "mean_error": mean_error}


if __name__ == "__main__":
    main()
