"""--features scatternet (Kymatio's Scattering2D as Tramer & Boneh use it) and the models for any input shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
from opacus.validators import ModuleValidator

from crepe import data, features
from crepe.cli import main
from crepe.config import UsageError
from crepe.models import MODELS, build_model
from crepe.training import inputs
from crepe.training.plan import new_run_config


def images(n: int, shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def test_scatternet_features_are_kymatios_scattering_of_each_channel() -> None:
    x = images(5, (3, 32, 32))
    out = features.apply("scatternet", x, batch=2)  # batches of 2: the same as one call
    assert out.shape == (5, 3 * 81, 8, 8) == (5, *features.shape_after("scatternet", (3, 32, 32)))
    direct = ScatteringTorch2D(J=2, shape=(32, 32), L=8)(x)  # (n, C, 81, H/4, W/4)
    torch.testing.assert_close(out, direct.reshape(5, 243, 8, 8), rtol=0, atol=0)
    red = features.apply("scatternet", x[:, :1])
    torch.testing.assert_close(out[:, :81], red, rtol=1e-6, atol=1e-6)  # channel c's 81 come c-th, alone


def test_scatternet_features_are_positively_homogeneous() -> None:
    # every coefficient is |.|-built from linear filters: S(a x) = a S(x) for a > 0, and none is constant
    x = images(4)
    s = features.apply("scatternet", x)
    torch.testing.assert_close(features.apply("scatternet", 2.5 * x), 2.5 * s, rtol=1e-5, atol=1e-6)
    assert bool((s.flatten(2).std(dim=2) > 0).all())


@pytest.mark.parametrize("shape", [(1, 30, 30), (1, 6, 6)])
def test_images_the_scattering_cannot_divide_are_refused(shape) -> None:
    with pytest.raises(UsageError, match="sides are multiples of 4"):
        features.apply("scatternet", images(2, shape))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (81, 7, 7)])
def test_every_model_takes_any_channels_and_size_and_opacus_can_wrap_it(name: str, shape) -> None:
    groups = 27 if shape[0] == 81 else 1
    if name in ("cnn", "convnet", "cifar-cnn") and shape == (81, 7, 7):  # stride-2 stages or poolings: 7 is too small
        with pytest.raises(UsageError, match=rf"(--model {name} cannot take inputs of shape|too deep for 7x7)"):
            build_model(name, shape=shape)
        return
    model = build_model(name, shape=shape, classes=7, norm_groups=groups if name in ("linear", "scatter-cnn") else None)
    assert model(images(3, shape)).shape == (3, 7)
    assert ModuleValidator.validate(model, strict=False) == []
    assert isinstance(model.head, torch.nn.Linear)  # the proxies' last layer


def test_the_opacus_cnn_keeps_its_parameters_on_mnist() -> None:
    # checkpoints of earlier runs load: the 28x28 CNN's names and shapes are the ones it always had
    shapes = {k: tuple(v.shape) for k, v in build_model("cnn").state_dict().items()}
    assert shapes == {"features.0.weight": (16, 1, 8, 8), "features.0.bias": (16,), "features.3.weight": (32, 16, 4, 4),
                      "features.3.bias": (32,), "features.7.weight": (32, 512), "features.7.bias": (32,),
                      "head.weight": (10, 32), "head.bias": (10,)}


def test_the_input_groupnorm_has_no_parameters_and_normalises_each_example() -> None:
    model = build_model("linear", shape=(81, 7, 7), norm_groups=27)
    assert [n for n, _ in model.named_parameters()] == ["head.weight", "head.bias"]
    x = 3.0 + 5.0 * images(2, (81, 7, 7))
    h = model.features(x).reshape(2, 27, -1)
    torch.testing.assert_close(h.mean(dim=2), torch.zeros(2, 27), rtol=0, atol=1e-5)
    torch.testing.assert_close(h.var(dim=2, unbiased=False), torch.ones(2, 27), rtol=0, atol=1e-3)
    with pytest.raises(UsageError, match="--norm-groups 4 does not divide the input's 81 channels"):
        build_model("linear", shape=(81, 7, 7), norm_groups=4)


def test_too_small_an_input_is_refused_with_the_shape() -> None:
    with pytest.raises(UsageError, match=r"--model cnn cannot take inputs of shape \(1, 6, 6\)"):
        build_model("cnn", shape=(1, 6, 6))


def test_the_features_of_a_builtin_dataset_are_those_of_its_pixels(data_root: Path) -> None:
    given = {"dataset": "fashion-mnist", "data_dir": str(data_root), "train_subset": 50, "test_subset": 20,
             "method": "full"}
    raw = inputs.load_data(new_run_config(given))
    ds = inputs.load_data(new_run_config({**given, "features": "scatternet", "model": "linear"}))
    mean, std = data.NORMALISATION["fashion-mnist"]
    pixels = raw.x_train * std + mean
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6  # back in [0, 1], as the paper feeds them
    torch.testing.assert_close(ds.x_train, features.apply("scatternet", pixels))
    torch.testing.assert_close(ds.x_test, features.apply("scatternet", raw.x_test * std + mean))
    assert torch.equal(ds.y_train, raw.y_train) and ds.fingerprint != raw.fingerprint


@pytest.mark.parametrize(("args", "message"), [
    (["--norm-groups", "27"], "--norm-groups applies to --model linear or scatter-cnn only, not cnn"),
    (["--features", "scatternet", "--method", "private-set"], "--features scatternet with --method private-set"),
    (["--features", "scatternet", "--pretrain", "mnist"], "--features scatternet with --pretrain is not supported"),
    (["--features", "sift"], "unknown features 'sift'; valid: scatternet"),
])
def test_options_that_cannot_apply_are_refused(args, message, capsys) -> None:
    code = main(["train", "--out", "/nonexistent/never", "--dataset", "fashion-mnist", *args])
    assert code == 2 and message in capsys.readouterr().err


def test_a_scatternet_run_publishes_a_model_that_reloads_on_features(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(data_root),
                 "--train-subset", "300", "--test-subset", "100", "--method", "full", "--features", "scatternet",
                 "--model", "linear", "--norm-groups", "27", "--epochs", "1", "--batch-size", "64", "--sigma", "1.0",
                 "--lr", "2"])
    assert code == 0
    card = json.loads((out / "model.json").read_text())
    assert card["input_shape"] == [81, 7, 7] and card["normalisation"] is None
    assert card["features"] == {"name": "scatternet", "input": "crepe.features.apply('scatternet', x) of images "
                                "x = pixel / 255, (n, C, H, W)"}
    assert "build_model('linear', activation='relu', shape=(81, 7, 7), norm_groups=27)" in card["how_to_load"]
    model = build_model("linear", shape=(81, 7, 7), norm_groups=27)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    raw = data.load("fashion-mnist", data_dir=str(data_root), test_subset=100)
    mean, std = data.NORMALISATION["fashion-mnist"]
    with torch.no_grad():
        pred = model(features.apply("scatternet", raw.x_test * std + mean)).argmax(1)
    summary = json.loads((out / "summary.json").read_text())
    assert int((pred == raw.y_test).sum()) == round(summary["test_acc"] * 100)  # every test image as the run judged it
