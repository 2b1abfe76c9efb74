"""A model of your own on data of your own: DP training with crepe.train, then the weights in plain torch."""

import sys

import torch
from torch import nn

import crepe


class TinyNet(nn.Module):
    """Any module Opacus can wrap; for CRAIG, the logits come from an nn.Linear applied last."""

    def __init__(self, features: int = 20, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Your tensors; here, four overlapping Gaussian clusters in 20 dimensions."""
    centres = 0.4 * torch.randn(4, 20, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (n,), generator=generator)
    return centres[y] + torch.randn(n, 20, generator=generator), y


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/tinynet"
    g = torch.Generator().manual_seed(0)
    train, test = make_data(8000, g), make_data(2000, g)
    result = crepe.train(TinyNet(), train, test_data=test, out=out,
                         method="craig", fraction=0.25, target_epsilon=3.0, epochs=6, batch_size=250, lr=0.5)
    print(f"test accuracy {result.test_acc:.4f} at epsilon {result.epsilon:.3f} (select "
          f"{result.epsilons['select']:.3f}, train {result.epsilons['train']:.3f}) per example, sigma {result.sigma:.4g}")

    model = TinyNet()  # from here on, plain torch: the published weights load into your class
    model.load_state_dict(torch.load(f"{out}/model.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        accuracy = (model(test[0]).argmax(1) == test[1]).float().mean().item()
    print(f"reloaded from {out}/model.pt: test accuracy {accuracy:.4f}")
