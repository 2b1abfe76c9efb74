"""Every declared option, fed generated bad values on the command line: exit status 2 and one
message naming the option and what it allows (scikit-learn's check_param_validation, driven by
crepe.config's declarations and the method registry's option groups). And the registry itself:
each method's options, the refusal of another method's option, the valid names."""

from __future__ import annotations

import math

import pytest

from crepe import cli
from crepe.config import Spec, options
from crepe.smallsets import methods


def bad_values(s: Spec) -> list[str]:
    """Values outside what the declaration allows, as typed on a command line."""
    if s.registry:
        return ["no-such-method"]
    if s.choices:
        return ["no-such-choice", s.choices[0].upper() + "x"]
    if s.kind == "str":
        return [""]
    bad = ["1.5x", "nan", "inf"] if s.kind == "float" else ["1.5", "x"]
    if s.low is not None:
        bad.append(str(s.low if s.low_open else (s.low - 1 if s.kind == "int" else s.low - 0.5)))
    if s.high is not None:
        bad.append(str(s.high + 1))
    return bad


def allowed(name: str, s: Spec) -> list[str]:
    """What the message must say is allowed."""
    if s.registry:
        return list(methods.names())
    if s.choices:
        return list(s.choices)
    if s.kind == "str":
        return ["non-empty"]
    words = ["integer" if s.kind == "int" else "number"]
    return words


def reader(name: str) -> str:
    """A method that reads `name` (the default craig for common options)."""
    if name not in methods.method_options():
        return "craig"
    return next(m for m, method in methods.registry().items() if name in method.options)


CASES = [(name, value) for name, s in options().items() if s.kind != "bool" for value in bad_values(s)]


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_every_option_refuses_a_bad_value_by_name(name: str, value: str, tmp_path, capsys) -> None:
    s = options()[name]
    argv = ["train", "--out", str(tmp_path / "run"), "--method", reader(name), s.flag, value]
    if name == "method":
        argv = ["train", "--out", str(tmp_path / "run"), s.flag, value]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    names = (s.flag, name.replace("_", " "))
    assert any(n in err for n in names), f"{err!r} names neither {names}"
    assert all(a in err for a in allowed(name, s)) or (not s.choices and not s.registry and "must be" in err), err
    assert not (tmp_path / "run").exists()  # nothing written


def test_bad_values_cover_every_bound() -> None:
    """The generator above is not vacuous: each bounded number gets a value past each bound."""
    for name, s in options().items():
        if s.kind in ("int", "float") and (s.low is not None or s.high is not None):
            values = [float(v) for v in bad_values(s) if v.replace(".", "", 1).replace("-", "", 1).isdigit()]
            if s.low is not None:
                assert any(v < s.low or (s.low_open and v == s.low) for v in values), name
            if s.high is not None:
                assert any(v > s.high for v in values), name
    assert math.isnan(float(bad_values(options()["fraction"])[1]))


@pytest.mark.parametrize("flag", [s.flag for s in options().values() if s.kind == "bool"])
def test_a_boolean_flag_takes_no_value(flag: str, tmp_path, capsys) -> None:
    assert cli.main(["train", "--out", str(tmp_path / "run"), f"{flag}=maybe"]) == 2
    assert flag in capsys.readouterr().err


def test_each_method_declares_options_that_exist_and_refuses_the_others(tmp_path, capsys) -> None:
    registry = methods.registry()
    assert list(registry) == ["full", "random", "craig", "private-set"]  # their declared order
    for name, method in registry.items():
        assert set(method.options) <= set(options()), name
        for other in sorted(methods.method_options() - set(method.options)):
            assert methods.ignores(name, other)
    # one flag of another method's group: refused with its name and the method's
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--method", "full", "--proxy", "logits"]) == 2
    assert "--proxy does not apply to --method full" in capsys.readouterr().err
    assert not methods.ignores("craig", "proxy") and not methods.ignores("full", "epochs")  # common options apply to all


def test_an_unknown_method_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown method 'craig2'; valid: full, random, craig, private-set"):
        methods.get("craig2")
