"""crepe.train: a model and data crepe does not ship, end to end (the README's example as written),
what it refuses before writing anything, and what it returns."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import crepe
from crepe.config import UsageError
from crepe.privacy.accounting import epsilons
from crepe.training import rundir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_model.py"


def load_example():
    spec = importlib.util.spec_from_file_location("own_model", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_shows_the_example_script_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Your own model and data"):]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None and block.group(1) == EXAMPLE.read_text()


def test_the_example_trains_its_own_model_and_plain_torch_loads_the_weights(tmp_path: Path) -> None:
    out = tmp_path / "tinynet"
    done = subprocess.run([sys.executable, str(EXAMPLE), str(out)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)  # the crepe this test imports (installed, or src/ on a relative PYTHONPATH)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    card = json.loads((out / "model.json").read_text())
    assert card["model_class"].endswith("TinyNet") and card["input_shape"] == [20] and card["classes"] == 4
    assert summary["eps_total"] <= 3.0 and summary["eps_total"] >= 0.99 * 3.0

    example = load_example()
    model = example.TinyNet()
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))  # plain torch, the user's class
    g = torch.Generator().manual_seed(0)
    example.make_data(8000, g)
    x_test, y_test = example.make_data(2000, g)
    with torch.no_grad():
        accuracy = int((model(x_test).argmax(1) == y_test).sum()) / len(y_test)
    assert accuracy == pytest.approx(summary["test_acc"], abs=1e-9)
    assert accuracy > 0.5  # four classes: well above chance
    printed = re.search(r"test accuracy ([0-9.]+) at epsilon ([0-9.]+)", done.stdout)
    assert printed and float(printed.group(1)) == round(summary["test_acc"], 4)
    assert f"reloaded from {out}/model.pt: test accuracy {accuracy:.4f}" in done.stdout


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y[:, None, None, None].float()
    return x, y


def test_a_dataset_without_test_data_trains_a_copy_and_returns_what_the_run_recorded(tmp_path: Path) -> None:
    x, y = blobs(600, 0)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines: list[str] = []
    result = crepe.train(model, torch.utils.data.TensorDataset(x, y), method="random", sigma=1.5, epochs=2,
                         batch_size=60, out=tmp_path / "run", log=lines.append)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    assert type(result.model) is Net and not any(torch.equal(before[k], v) for k, v in result.model.state_dict().items()
                                                 if k.endswith("weight"))
    assert result.test_acc is None and len(result.metrics) == 2
    assert result.sigma == 1.5 and result.delta == 1e-5
    assert result.epsilons == pytest.approx(epsilons(result.ledger, delta=1e-5, accountant="pld"), abs=0)
    assert any(r.kind == "train" for r in result.ledger)
    assert rundir.final_line(result.summary).startswith("crepe train: test accuracy - (no test data) | epsilon")
    # the same call again reads the finished run back, and the CLI refuses to resume it
    again = crepe.train(model, (x, y), method="random", sigma=1.5, epochs=2, batch_size=60, out=tmp_path / "run",
                        log=lines.append)
    assert again.summary == result.summary
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), result.model.state_dict().values()))
    from crepe.cli import main

    assert main(["train", "--resume", str(tmp_path / "run")]) == 2


def test_craig_on_ones_own_model_runs_and_the_folder_holds_no_secret(tmp_path: Path) -> None:
    x, y = blobs(900, 1)
    xt, yt = blobs(300, 2)
    result = crepe.train(Net(), (x.numpy(), y.numpy()), test_data=(xt, yt), method="craig", fraction=0.3,
                         target_epsilon=4.0, epochs=2, batch_size=90, lr=0.5, out=tmp_path / "run", log=lambda s: None)
    assert 0.99 * 4.0 <= result.epsilon <= 4.0
    assert result.epsilons["select"] > 0 and result.test_acc is not None
    assert [r.kind for r in result.ledger][0] == "select"
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert set(torch.load(tmp_path / "run" / "model.pt", weights_only=True)) == set(Net().state_dict())


class Softmaxed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x.flatten(1)), 1)


@pytest.mark.parametrize(
    "model, data, options, message",
    [
        (Net(), "xy", {"batch_sze": 10}, "unknown option 'batch_sze' (did you mean batch_size?"),
        (Net(), "xy", {"dataset": "mnist"}, "dataset chooses crepe's own data or model"),
        (Net(), "xy", {"activation": "tanh"}, "activation chooses crepe's own data or model"),
        (Softmaxed(), "xy", {"method": "craig"}, "CRAIG's proxies (and dp-fedemb's local head) need a model whose output"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)), "xy", {"method": "full"},
         "Opacus cannot compute Sequential's per-example gradients"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), "xy", {}, "logits (n, C) with C > the largest label 2"),
        (nn.Sequential(nn.Flatten(), nn.Linear(63, 3)), "xy", {}, "fails on train_data's examples of shape (1, 8, 8)"),
        (Net(), "x", {}, "train_data is one Tensor of shape (60, 1, 8, 8): pass the pair (x, y)"),
        (Net(), "float-y", {}, "the labels must be a 1-D integer tensor"),
        (Net(), "xy", {"method": "private-set"}, "private-set generates 10 classes of 28x28"),
        ("a model", "xy", {}, "model must be a torch.nn.Module"),
    ],
)
def test_what_cannot_be_trained_is_refused_before_anything_is_written(tmp_path: Path, model, data, options,
                                                                      message) -> None:
    x, y = blobs(60, 3)
    given = {"xy": (x, y), "x": x, "float-y": (x, y.float())}[data]
    with pytest.raises(UsageError, match=re.escape(message)):
        crepe.train(model, given, epochs=1, out=tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_softmax_after_the_last_layer_is_fine_where_no_proxy_is_needed() -> None:
    x, y = blobs(60, 4)
    result = crepe.train(Softmaxed(), (x, y), method="full", sigma=1.0, epochs=1, batch_size=30, log=lambda s: None)
    assert result.out is None and len(result.metrics) == 1
