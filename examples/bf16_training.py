"""Pure-bfloat16 training: where plain bfloat16 updates stall, and what compensation gives back.

A small MLP fits a synthetic regression with AdamW at a small learning rate, so that many
updates are below half a bfloat16 ulp of their weight. Runs: float32 params (the reference),
bfloat16 params with float32 state, with bfloat16 state, with bfloat16 state and
``master_weights="kahan"`` (bfloat16 compensation), with ``master_weights="split"`` (the params
and a uint16 buffer of low halves are a float32 master weight; float32 and bfloat16 state), and
torch-optimi's Kahan-summation AdamW where it is installed. Prints the final losses and the bytes per parameter each run keeps
(params plus optimizer state, measured on the tensors), and with ``--plot`` saves the loss curves.

    python examples/bf16_training.py [--steps N] [--plot PATH]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import portopt.torch as pt
import torch

LR, WEIGHT_DECAY = 3e-4, 0.01


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(512, 16, generator=generator)
    y = torch.sin(x[:, :8].sum(dim=1, keepdim=True)) + 0.5 * torch.cos(x[:, 8:].sum(dim=1, keepdim=True))
    return x, y


def _model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128),
                                torch.nn.Tanh(), torch.nn.Linear(128, 1))
    return model.to(dtype)


def _bytes_per_parameter(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    params = list(model.parameters())
    count = sum(p.numel() for p in params)
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items()
                if isinstance(v, torch.Tensor) and k != "step")  # per-parameter buffers, not the step count
    return (sum(p.numel() * p.element_size() for p in params) + state) / count


def train(dtype: torch.dtype, make: Callable, steps: int) -> tuple[list[float], float]:
    """The loss (in float32) after each step, and the bytes per parameter kept."""
    x, y = _data()
    model = _model(dtype)
    optimizer = make(model.parameters())
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, _bytes_per_parameter(model, optimizer)


def runs() -> dict[str, tuple[torch.dtype, Callable]]:
    options = dict(lr=LR, weight_decay=WEIGHT_DECAY)
    chosen: dict[str, tuple[torch.dtype, Callable]] = {
        "float32 params (reference)": (torch.float32, lambda ps: pt.AdamW(ps, **options)),
        "bfloat16 params, float32 state": (torch.bfloat16, lambda ps: pt.AdamW(ps, **options)),
        "bfloat16 params, bfloat16 state": (torch.bfloat16,
                                            lambda ps: pt.AdamW(ps, **options, state_dtype="bfloat16")),
        "bfloat16, bfloat16 state, kahan": (torch.bfloat16, lambda ps: pt.AdamW(
            ps, **options, state_dtype="bfloat16", master_weights="kahan")),
        "bfloat16, float32 state, split": (torch.bfloat16, lambda ps: pt.AdamW(
            ps, **options, master_weights="split")),
        "bfloat16, bfloat16 state, split": (torch.bfloat16, lambda ps: pt.AdamW(
            ps, **options, state_dtype="bfloat16", master_weights="split")),
    }
    try:
        import optimi
    except ImportError:
        return chosen
    chosen["torch-optimi AdamW, kahan_sum"] = (torch.bfloat16, lambda ps: optimi.AdamW(
        ps, lr=LR, weight_decay=WEIGHT_DECAY, decouple_lr=False, kahan_sum=True))
    return chosen


def plot(results: dict[str, tuple[list[float], float]], path: str) -> None:
    from _plotting import new_figure, save_figure

    figure, axis = new_figure(7.0, 4.0)
    for name, (losses, _) in results.items():
        axis.plot(losses, label=name, linestyle="--" if "optimi" in name else "-")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (MSE)")
    axis.set_title(f"AdamW lr={LR}, MLP 16-128-128-1, pure bfloat16 vs float32")
    axis.legend()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, tuple[list[float], float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--plot", metavar="PATH", help="save the loss curves as a PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    results = {name: train(dtype, make, args.steps) for name, (dtype, make) in runs().items()}
    print(f"{'run':34s} {'final loss':>10s} {'bytes/param':>12s}")
    for name, (losses, size) in results.items():
        print(f"{name:34s} {losses[-1]:10.5f} {size:12.1f}")
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
