"""Private set generation (crepe.private_set): the noisy real gradient against a slow
autograd + NumPy oracle, clipping, release counting, no real image in the
initialisation, bit-identical resume, the saved set, bad input."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from crepe import data
from crepe.smallsets import private_set as ps
from crepe.smallsets.private_set import ConvNet, GenerationState, Schedule, generate, noisy_real_gradient

TINY = Schedule(spc=2, iterations=3, outer_loops=2, batch_size=16, inner_steps=2, width=4, depth=2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def fm(data_root: Path) -> data.LoadedData:
    torch.set_num_threads(2)
    return data.load("fashion-mnist", data_dir=str(data_root / "fashion-mnist"), train_subset=200, test_subset=10)


def run(fm: data.LoadedData, schedule: Schedule = TINY, **kw: Any) -> tuple[torch.Tensor, torch.Tensor, list[tuple[float, float]]]:
    calls: list[tuple[float, float]] = []
    args: dict[str, Any] = {
        "schedule": schedule, "sigma": 1.0, "noise_gen": gen(1), "sample_gen": gen(2), "init_gen": gen(3),
        "on_release": lambda s, q: calls.append((s, q)),
    }
    args.update(kw)
    x = args.pop("x", fm.x_train)
    images, labels = generate(x, fm.y_train, **args)
    return images, labels, calls


def norm_of(grads: dict[str, torch.Tensor], *, per_example: bool) -> torch.Tensor:
    """L2 norm over all parameters: (b,) per example, or a scalar, in float64."""
    start = 1 if per_example else 0
    return torch.stack([t.double().flatten(start).pow(2).sum(-1) for t in grads.values()]).sum(0).sqrt()


def oracle(net: ConvNet, x: torch.Tensor, y: torch.Tensor, *, clip: float, sigma: float, B: float, noise_gen: torch.Generator) -> list[np.ndarray]:
    """One example at a time with plain autograd; the clip factor min(1, C/||g||) in NumPy float64."""
    params = list(net.parameters())
    total = [np.zeros(p.shape) for p in params]
    for i in range(len(y)):
        loss = F.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
        g = [t.detach().double().numpy() for t in torch.autograd.grad(loss, params)]
        norm = np.sqrt(sum((t**2).sum() for t in g))
        factor = min(1.0, clip / norm)
        total = [a + factor * t for a, t in zip(total, g)]
    noise = [torch.randn(p.shape, generator=noise_gen).double().numpy() for p in params]
    return [(a + sigma * clip * z) / B for a, z in zip(total, noise)]


@pytest.mark.parametrize("sigma", [0.0, 0.7])
def test_noisy_gradient_equals_oracle(fm: data.LoadedData, sigma: float) -> None:
    net = ConvNet(4, 2, 10, generator=gen(0))
    params = {k: v.detach() for k, v in net.named_parameters()}
    x, y = fm.x_train[:40], fm.y_train[:40]
    # C at the median per-example norm: both branches of min(1, C/||g||) are exercised
    norms = norm_of(ps.per_example_grads(net, params, x, y), per_example=True)
    clip = float(norms.median())
    assert (norms > clip).sum() >= 10 and (norms < clip).sum() >= 10
    got = noisy_real_gradient(net, params, x, y, clip=clip, sigma=sigma, expected_batch_size=25.0, noise_gen=gen(5))
    want = oracle(net, x, y, clip=clip, sigma=sigma, B=25.0, noise_gen=gen(5))
    assert list(got) == [k for k, _ in net.named_parameters()]
    for g, w in zip(got.values(), want):
        np.testing.assert_allclose(g.double().numpy(), w, rtol=2e-4, atol=1e-7)


def test_huge_gradient_contributes_exactly_clip(fm: data.LoadedData) -> None:
    net = ConvNet(4, 2, 10, generator=gen(0))
    with torch.no_grad():
        net.head.weight.mul_(1e4)  # logits, hence the gradient, become enormous
    params = {k: v.detach() for k, v in net.named_parameters()}
    x, y = fm.x_train[:1], fm.y_train[:1]
    raw = norm_of(ps.per_example_grads(net, params, x, y), per_example=True)[0]
    assert raw > 1e3
    got = noisy_real_gradient(net, params, x, y, clip=0.1, sigma=0.0, expected_batch_size=1.0, noise_gen=gen(5))
    norm = norm_of(got, per_example=False)
    assert float(norm) == pytest.approx(0.1, rel=1e-5)


def test_release_count_and_rate(fm: data.LoadedData) -> None:
    images, labels, calls = run(fm)
    steps, q = TINY.releases(200)
    assert (steps, q) == (3 * 2 * 1, 16 / 200)
    assert calls == [(1.0, q)] * steps
    assert images.shape == (20, 1, 28, 28) and images.dtype == torch.float32
    assert labels.tolist() == [c for c in range(10) for _ in range(2)] and labels.dtype == torch.int64
    sched = replace(TINY, batch_loops=3)
    assert sched.releases(200)[0] == 18 and len(run(fm, sched)[2]) == 18


def test_empty_batch_still_releases_noise(fm: data.LoadedData, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []

    def empty(n: int, q: float, *, generator: torch.Generator) -> torch.Tensor:
        torch.rand(n, generator=generator)
        drawn.append(n)
        return torch.zeros(0, dtype=torch.int64)

    monkeypatch.setattr(ps, "poisson_batch", empty)
    sched = replace(TINY, iterations=1, outer_loops=1)
    before = run(fm, replace(sched, lr_images=0.0))[0]
    after, _, calls = run(fm, sched)
    assert calls == [(1.0, sched.releases(200)[1])] and drawn == [200, 200]  # two runs
    assert not torch.equal(before, after)  # the pure-noise gradient moved the images
    # and directly: an empty batch gives noise / B
    net = ConvNet(4, 2, 10, generator=gen(0))
    params = {k: v.detach() for k, v in net.named_parameters()}
    got = noisy_real_gradient(net, params, fm.x_train[:0], fm.y_train[:0], clip=0.1, sigma=2.0, expected_batch_size=8.0, noise_gen=gen(5))
    z = gen(5)
    for g, p in zip(got.values(), params.values()):
        torch.testing.assert_close(g, 2.0 * 0.1 * torch.randn(p.shape, generator=z) / 8.0)


def test_poisson_batch_is_poisson() -> None:
    idx = ps.poisson_batch(100_000, 0.01, generator=gen(0))
    assert idx.dtype == torch.int64 and torch.all(idx[1:] > idx[:-1])
    assert abs(len(idx) - 1000) < 5 * np.sqrt(1000)
    assert len(ps.poisson_batch(10, 1e-9, generator=gen(0))) == 0


def test_initial_images_do_not_depend_on_real_images(fm: data.LoadedData) -> None:
    frozen = replace(TINY, iterations=1, outer_loops=1, lr_images=0.0)  # images before the first update
    a = run(fm, frozen)[0]
    b = run(fm, frozen, x=torch.randn_like(fm.x_train) * 5)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, torch.randn((20, 1, 28, 28), generator=gen(3)), rtol=0, atol=0)
    assert not torch.equal(run(fm, replace(frozen, lr_images=0.1))[0], a)  # the update does move them


def test_resume_is_bit_identical(fm: data.LoadedData) -> None:
    straight, labels, calls = run(fm)
    saved: list[bytes] = []

    class Stop(Exception):
        pass

    def save_and_stop(state: GenerationState) -> None:  # an interruption right after iteration 2
        if state.iteration == 2:
            buf = io.BytesIO()
            torch.save(state.to_dict(), buf)
            saved.append(buf.getvalue())
            raise Stop

    with pytest.raises(Stop):
        run(fm, on_checkpoint=save_and_stop)
    state = GenerationState.from_dict(torch.load(io.BytesIO(saved[0]), weights_only=True))
    assert state.iteration == 2
    # fresh generators with other seeds: resuming must restore their states
    resumed, labels2, calls2 = run(fm, state=state, noise_gen=gen(91), sample_gen=gen(92), init_gen=gen(93))
    assert torch.equal(resumed, straight) and torch.equal(labels, labels2)
    assert len(calls2) == len(calls) - 2 * TINY.outer_loops
    with pytest.raises(ValueError, match="state was made with"):
        run(fm, replace(TINY, lr_images=0.2), state=state)


def test_save_synthetic_loads_with_numpy(fm: data.LoadedData, tmp_path: Path) -> None:
    images, labels, _ = run(fm, replace(TINY, iterations=1))
    npz, png = ps.save_synthetic(tmp_path, images, labels, mean=0.2860, std=0.3530)
    with np.load(npz, allow_pickle=False) as f:
        assert f["images"].dtype == np.float32 and f["images"].shape == (20, 1, 28, 28)
        np.testing.assert_array_equal(f["images"], images.numpy())
        np.testing.assert_array_equal(f["labels"], labels.numpy())
        assert str(f["scale"]) == "normalised" and float(f["mean"]) == pytest.approx(0.2860)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_synthetic_png_has_a_title_and_class_names(fm: data.LoadedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    drawn = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (drawn.append(fig), close(fig)))
    images, labels, _ = run(fm, replace(TINY, iterations=1))
    for dataset, first, last in (("fashion-mnist", "T-shirt/top", "Ankle boot"), ("mnist", "digit 0", "digit 9")):
        ps.save_synthetic(tmp_path / dataset, images, labels, mean=0.2860, std=0.3530, dataset=dataset)
        ax = drawn[-1].axes[0]
        assert ax.get_title().startswith(f"Synthetic training set (private-set)\n{dataset}: 20 images, 2 per class")
        names = [t.get_text() for t in ax.get_yticklabels()]
        assert len(names) == 10 and (names[0], names[-1]) == (first, last)
    ps.save_synthetic(tmp_path / "none", images, labels, mean=0.2860, std=0.3530)  # no dataset: the label numbers
    assert [t.get_text() for t in drawn[-1].axes[0].get_yticklabels()][:2] == ["class 0", "class 1"]


def test_train_on_synthetic_fits_the_set(fm: data.LoadedData) -> None:
    x, y = fm.x_train[:20], fm.y_train[:20]
    model = ConvNet(8, 2, 10, generator=gen(0))
    ps.train_on_synthetic(model, x, y, epochs=30, lr=0.05, batch_size=10, generator=gen(1))
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).float().mean()) >= 0.9


def test_bad_input(fm: data.LoadedData) -> None:
    with pytest.raises(ValueError, match=r"spc must be an integer >= 1, got 0"):
        Schedule(spc=0)
    with pytest.raises(ValueError, match=r"spc \(--images-per-class\) = 500 exceeds the number of training examples "
                       r"of some class; allowed: spc <= the size of the smallest class"):
        run(fm, replace(TINY, spc=500))
    with pytest.raises(ValueError, match=r"sigma must be a finite number >= 0, got -1"):
        run(fm, sigma=-1.0)
    with pytest.raises(ValueError, match=r"unknown match 'row'; valid: channel, layer"):
        Schedule(match="row")
    with pytest.raises(ValueError, match=r"batch_size must be in 1\.\.200"):
        run(fm, replace(TINY, batch_size=201))
    with pytest.raises(ValueError, match=r"clip must be a finite number > 0"):
        Schedule(clip=0.0)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.4"):
        run(fm, classes=5)
    with pytest.raises(ValueError, match=r"the paper defines loops for spc in \[1, 10, 20, 30, 40, 50\], got 7"):
        Schedule.paper(7)
    with pytest.raises(ValueError, match=r"too deep for 28x28 input; allowed: 1\.\.5"):
        ConvNet(4, 6)


# ---------------------------------------------------------------------------------------------
# `crepe train --method private-set`: the method in the run pipeline.

PS_ARGS = ["--method", "private-set", "--train-subset", "500", "--test-subset", "200", "--images-per-class", "2",
           "--gen-iterations", "3", "--gen-outer-loops", "2", "--batch-size", "50", "--max-grad-norm", "0.1",
           "--epochs", "3", "--model", "convnet", "--lr", "0.01", "--momentum", "0.9", "--threads", "1"]


def _ps_run(data_root, out, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(data_root), *PS_ARGS, *extra]


def test_private_set_run_accounts_each_noisy_gradient_and_hits_the_target(data_root, tmp_path, capsys) -> None:
    import json

    from dp_accounting.pld import privacy_loss_distribution as pld

    from crepe import cli
    from crepe.privacy.accounting import PLD_GRID

    out = tmp_path / "run"
    assert cli.main(_ps_run(data_root, out, "--target-epsilon", "10")) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["ledger"] == [{"kind": "generate", "noise_multiplier": s["sigma"], "sample_rate": 0.1, "steps": 6,
                            "unit": "example"}]
    by_hand = pld.from_gaussian_mechanism(  # 3 iterations x 2 outer loops, q = 50/500
        s["sigma"], sampling_prob=0.1, value_discretization_interval=PLD_GRID).self_compose(6)
    assert s["eps_total"] == pytest.approx(by_hand.get_epsilon_for_delta(1e-5), rel=1e-9)
    assert 9.9 <= s["eps_total"] <= 10 and s["eps_train"] == 0.0  # training on synthetic images is free
    assert s["coreset_size"] == 20 and s["labels_public"] is False
    z = np.load(out / "synthetic.npz")
    assert z["images"].shape == (20, 1, 28, 28) and list(z["labels"]) == [c for c in range(10) for _ in range(2)]
    assert (out / "synthetic.png").stat().st_size > 1000


def test_private_set_resumes_mid_generation_exactly(data_root, tmp_path, capsys, monkeypatch) -> None:
    from crepe import cli
    from crepe.training import state as ckpt

    a, b = tmp_path / "a", tmp_path / "b"
    assert cli.main(_ps_run(data_root, a, "--sigma", "1", "--noise", "reproducible")) == 0
    real_save, saves = ckpt.save, []

    def save_then_stop(*args, **kw):  # interrupt right after the checkpoint of generation iteration 1
        real_save(*args, **kw)
        saves.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save", save_then_stop)
    assert cli.main(_ps_run(data_root, b, "--sigma", "1", "--noise", "reproducible")) == 130
    monkeypatch.setattr(ckpt, "save", real_save)
    assert saves == [1] and not (b / "synthetic.npz").exists()
    assert cli.main(["train", "--resume", str(b)]) == 0
    za, zb = np.load(a / "synthetic.npz"), np.load(b / "synthetic.npz")
    np.testing.assert_array_equal(za["images"], zb["images"])
    import json

    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["ledger"] == sb["ledger"] and sa["test_acc"] == sb["test_acc"]
    from crepe.training import rundir  # finished: the generation state and generators are gone

    ck = ckpt.load(b / rundir.CHECKPOINT, cfg=rundir.read_config(b), fingerprint="none kept")
    assert "generators" not in ck and sorted(ck["state"]) == ["epoch", "ledger", "metrics"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--fraction", "0.2"], "--fraction does not apply to --method private-set"),
        (["--images-per-class", "0"], "--images-per-class must be an integer >= 1"),
        (["--images-per-class", "400"], "spc"),
        (["--clipping", "automatic"], "--clipping and --diagnostics do not apply"),
        (["--target-epsilon", "1e-7"], "unreachable"),
    ],
)
def test_private_set_bad_input(data_root, tmp_path, capsys, extra, match) -> None:
    from crepe import cli

    out = tmp_path / "run"
    assert cli.main(_ps_run(data_root, out, *extra)) == 2
    err = capsys.readouterr().err
    assert "error:" in err and match in err, err
    assert not out.exists()


def test_a_refused_private_set_run_prints_no_private_class_count(data_root, tmp_path, capsys) -> None:
    """The method keeps labels private: refusing spc above the smallest class may not say how small it is."""
    import re

    from crepe import cli

    counts = np.bincount(data.load("fashion-mnist", data_dir=str(data_root), train_subset=500).y_train.numpy())
    spc = int(counts.min()) + 1  # just above the limit: the closest a message could come to printing it
    assert cli.main(_ps_run(data_root, tmp_path / "run", "--images-per-class", str(spc))) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert f"= {spc} exceeds the number of training examples of some class" in line
    assert "allowed: spc <= the size of the smallest class" in line
    assert re.findall(r"\d+", line.replace(f"= {spc} ", "")) == [], line  # no number but the one given


def test_gen_batch_loops_releases_outer_times_batch_loops_gradients(data_root, tmp_path) -> None:
    """--gen-batch-loops (the paper's batch loops): each iteration releases outer x batch loops noisy
    real gradients, and the ledger holds every one of them."""
    import json

    from crepe import cli

    out = tmp_path / "run"
    assert cli.main(_ps_run(data_root, out, "--gen-batch-loops", "3", "--sigma", "2")) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["ledger"] == [{"kind": "generate", "noise_multiplier": 2.0, "sample_rate": 0.1, "steps": 3 * 2 * 3,
                            "unit": "example"}]  # 3 iterations x 2 outer loops x 3 batch loops
    assert cli.main(["train", "--out", str(tmp_path / "c"), "--gen-batch-loops", "2"]) == 2  # craig does not read it
