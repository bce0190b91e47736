"""The torch drop-in on a small torch model: one import changes, the loop stays.

    python examples/torch_dropin.py [--steps N]
"""

from __future__ import annotations

import argparse

import portopt.torch as pt
import torch


def train(optimizer_class, steps: int) -> list[float]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=generator)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    optimizer = optimizer_class(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    results = {"portopt.torch.Adam": train(pt.Adam, args.steps), "torch.optim.Adam": train(torch.optim.Adam, args.steps)}
    for name, losses in results.items():
        print(f"{name:20s} loss {losses[0]:.4f} -> {losses[-1]:.5f}")
    return results


if __name__ == "__main__":
    main()
