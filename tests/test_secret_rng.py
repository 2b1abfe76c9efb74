"""crepe.dp.secret_rng: 256-bit keys expanded into the whole MT19937 state of a torch generator.

The audit's finding: `Generator.manual_seed(s)` keeps the low 32 bits of s, so a
63-bit secret seed had 32 bits of entropy. These tests check that every bit of
a key matters, that the state written into torch is the standard MT19937 (an
independent oracle: numpy's MT19937), and that a torch whose state layout
differs is refused rather than seeded weakly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crepe.dp import secret_rng
from crepe.dp.secret_rng import KEY_BYTES, STATE_BYTES, init_genrand, keyed_generator, mt19937_words

KEY = bytes(range(7, 7 + KEY_BYTES))


def noise(key: bytes, name: str = "noise") -> torch.Tensor:
    return torch.normal(0.0, 1.0, (64,), generator=keyed_generator(key, name))


def flipped(key: bytes, bit: int) -> bytes:
    b = bytearray(key)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_every_single_bit_of_the_key_changes_the_noise() -> None:
    """All 256 bits, the first and last byte's and the high bits of every word included (the
    audit flipped the high bits of a seed and got the same noise)."""
    base = noise(KEY)
    same = [bit for bit in range(8 * KEY_BYTES) if torch.equal(noise(flipped(KEY, bit)), base)]
    assert same == [], f"flipping these key bits leaves the noise unchanged: {same}"
    assert torch.equal(noise(KEY), base)  # and the same key gives the same noise


def test_names_separate_the_streams_of_one_key() -> None:
    draws = {name: noise(KEY, name) for name in ("noise", "sampler", "select")}
    assert not torch.equal(draws["noise"], draws["sampler"]) and not torch.equal(draws["sampler"], draws["select"])
    assert not torch.equal(draws["noise"], draws["select"])


def test_the_key_fills_all_624_words_and_keys_are_fresh() -> None:
    words = mt19937_words(KEY, "noise")
    assert len(words) == 624 and words[0] == 0x80000000  # only word 0's top bit enters the twist
    assert len(set(words[1:])) == 623 and all(0 <= w < 2**32 for w in words)
    assert len(secret_rng.new_key()) == KEY_BYTES and secret_rng.new_key() != secret_rng.new_key()
    with pytest.raises(ValueError, match="a generator key has 32 bytes, got 8"):
        mt19937_words(b"\0" * 8, "noise")


def test_a_keyed_generator_draws_the_standard_mt19937_stream() -> None:
    """Oracle: numpy's MT19937 with the same 624 words, before its first twist (pos 624).
    torch's int64 random_() is (w1 << 32 | w2) mod 2^63 over consecutive raw words w1, w2."""
    g = keyed_generator(KEY, "sampler")
    bits = numpy_mt19937(mt19937_words(KEY, "sampler"), 4000)  # past six twists
    want = ((bits[0::2] << np.uint64(32)) | bits[1::2]) & np.uint64(2**63 - 1)
    got = torch.empty(2000, dtype=torch.int64).random_(generator=g).numpy().astype(np.uint64)
    np.testing.assert_array_equal(got, want)


def numpy_mt19937(words: list[int], n: int) -> np.ndarray:
    bg = np.random.MT19937()
    bg.state = {"bit_generator": "MT19937", "state": {"key": np.array(words, dtype=np.uint32), "pos": 624}}
    return bg.random_raw(n).astype(np.uint64)


@pytest.mark.parametrize("seed", [0, 1, 5489, 2**32 - 1])
def test_init_genrand_is_mt19937s_standard_seeding(seed: int) -> None:
    np.testing.assert_array_equal(np.array(init_genrand(seed), dtype=np.uint32), np.random.RandomState(seed).get_state()[1])


@pytest.mark.parametrize("seed", [3, 2**32 + 3, 0x7FFF_FFFF_0000_0003])
def test_the_layout_on_this_torch_reproduces_manual_seed_bit_for_bit(seed: int) -> None:
    """The layout assumption (secret_rng's docstring): a state packed from init_genrand's words of
    the low 32 bits of a seed draws exactly manual_seed's stream -- the audit's weakness, and the
    proof that set_state places the words where torch's MT19937 reads them."""
    assert secret_rng._layout_problem() is None
    ref = torch.Generator().manual_seed(seed)
    assert torch.equal(ref.get_state(), secret_rng._pack(init_genrand(seed), initial_seed=seed))
    g = torch.Generator()
    g.set_state(secret_rng._pack(init_genrand(seed)))
    for draw in (lambda h: torch.randn(1000, generator=h), lambda h: torch.randint(0, 2**31, (1000,), generator=h),
                 lambda h: torch.rand(1000, generator=h, dtype=torch.float64)):
        assert torch.equal(draw(g), draw(ref))


class Shifted(torch.Generator):
    """A torch whose state holds one more 8-byte field before the words (same total size)."""

    def get_state(self) -> torch.Tensor:
        s = super().get_state()
        return torch.cat([s[:24], torch.zeros(8, dtype=torch.uint8), s[24:-8]])


class Longer(torch.Generator):
    def get_state(self) -> torch.Tensor:
        return torch.cat([super().get_state(), torch.zeros(8, dtype=torch.uint8)])


def test_a_changed_state_layout_is_named() -> None:
    assert "624 words at offset 24" in (secret_rng._layout_problem(Shifted) or "")
    assert f"5064 values of torch.uint8, expected {STATE_BYTES}" in (secret_rng._layout_problem(Longer) or "")


def test_a_changed_state_layout_refuses_to_make_generators(monkeypatch: pytest.MonkeyPatch) -> None:
    secret_rng._check_layout.cache_clear()
    monkeypatch.setattr(secret_rng, "_layout_problem", lambda: "a test's layout")
    try:
        with pytest.raises(RuntimeError, match=r"not the MT19937 layout .*\(a test's layout\); refusing"):
            keyed_generator(KEY, "noise")
    finally:
        secret_rng._check_layout.cache_clear()  # the real check runs again on the next use
