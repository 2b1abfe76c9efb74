"""torch generators keyed with 256 bits: the randomness of DP noise, sampling and selection.

torch's CPU generator is MT19937, and `Generator.manual_seed(s)` runs MT19937's
init_genrand on the low 32 bits of s only: a 63-bit secret seed had 32 bits of
entropy, and seeds that differ only in their high bits give the same stream.
Here a key of KEY_BYTES bytes (from the OS: `new_key`) is expanded by
HMAC-SHA-256 in counter mode into all 624 words of the MT19937 state, which
is written into the generator with `set_state`. A name separates the
generators of one key ("noise", "sampler", "select"): one key, independent
streams.

What this does not change: MT19937 is not a cryptographic generator. Its state
is the whole secret (anyone holding a generator state can replay every draw
before and after it), and 624 consecutive raw outputs determine the state.
The key only makes the state unguessable: 2^256 keys instead of 2^32 seeds.

The layout of torch's state tensor (CPUGeneratorImplState; 5056 bytes,
native little-endian), found by comparing `manual_seed(s).get_state()` with
init_genrand(s); `_layout_problem` checks it once per process before any key
is used, so a torch that changes it fails loudly instead of seeding weakly:

    offset    0  uint64  the_initial_seed  what initial_seed() returns (0 here: there is no seed)
              8  int32   left              draws left before the next twist + 1 (1: twist first)
             12  int32   seeded            1
             16  uint64  next              index of the next word (0)
             24  uint64  state[624]        the 32-bit MT words, one per uint64
           5016  double  normal_x, normal_y, normal_rho; int32 normal_is_valid; 4 bytes padding
           5048  float   next_float_normal_sample; bool its valid flag; 3 bytes padding

(left, next) = (1, 0) is MT19937 right after seeding: the first draw twists
the 624 words, as after init_genrand. No cached normal sample (all zero).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import struct
from typing import Callable

import torch

KEY_BYTES = 32  # 256-bit keys
MT_WORDS = 624
STATE_BYTES = 5056
_HEADER = struct.Struct("<QiiQ")  # the_initial_seed, left, seeded, next
_WORDS = struct.Struct(f"<{MT_WORDS}Q")
_MASK32 = 0xFFFFFFFF


def new_key() -> bytes:
    """KEY_BYTES from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def mt19937_words(key: bytes, name: str) -> list[int]:
    """The 624 32-bit words of the MT19937 state of generator `name` under `key`:
    HMAC-SHA-256(key, name NUL counter) for counter = 0, 1, ..., as little-endian words."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a generator key has {KEY_BYTES} bytes, got {len(key)}")
    blocks = -(-MT_WORDS * 4 // 32)  # 78 SHA-256 blocks of 8 words
    stream = b"".join(
        hmac.digest(key, name.encode() + b"\0" + struct.pack("<I", i), hashlib.sha256) for i in range(blocks)
    )
    words = list(struct.unpack(f"<{MT_WORDS}I", stream[: MT_WORDS * 4]))
    # The twist reads only the top bit of word 0. Setting it, as MT19937's init_by_array does,
    # rules out the all-zero state (a generator that outputs zeros forever) and costs no entropy.
    words[0] = 0x80000000
    return words


def init_genrand(seed: int) -> list[int]:
    """MT19937's standard seeding of a 32-bit seed (what torch's manual_seed does)."""
    words = [seed & _MASK32]
    for i in range(1, MT_WORDS):
        words.append((1812433253 * (words[-1] ^ (words[-1] >> 30)) + i) & _MASK32)
    return words


def _pack(words: list[int], *, initial_seed: int = 0) -> torch.Tensor:
    """torch's state tensor (layout above) of MT19937 right after seeding with these words."""
    raw = _HEADER.pack(initial_seed, 1, 1, 0) + _WORDS.pack(*words)
    return torch.frombuffer(bytearray(raw + bytes(STATE_BYTES - len(raw))), dtype=torch.uint8)


def _draws(g: torch.Generator) -> torch.Tensor:
    """1,400 raw words (63 bits of each pair) and a few normals: past two twists."""
    return torch.cat([torch.empty(700, dtype=torch.int64).random_(generator=g),
                      torch.randn(20, generator=g, dtype=torch.float64).view(torch.int64)])


def _layout_problem(make: Callable[[], torch.Generator] = torch.Generator) -> str | None:
    """How this torch's generator state differs from the layout above, or None if it does not."""
    seed = 0x5EED_1234_C0FF_EE42  # high bits set: manual_seed must keep only the low 32
    ref = make()
    ref.manual_seed(seed)
    got = ref.get_state()
    if got.dtype != torch.uint8 or got.numel() != STATE_BYTES:
        return f"get_state() is {got.numel()} values of {got.dtype}, expected {STATE_BYTES} of torch.uint8"
    if not torch.equal(got, _pack(init_genrand(seed), initial_seed=seed)):
        header = _HEADER.unpack(bytes(got[: _HEADER.size].tolist()))
        return (f"manual_seed({seed:#x}) does not give init_genrand's 624 words at offset {_HEADER.size} with header "
                f"(initial_seed, left, seeded, next) = ({seed:#x}, 1, 1, 0) and nothing cached; header is {header}")
    g = make()
    g.set_state(_pack(init_genrand(seed)))
    if not torch.equal(_draws(g), _draws(ref)):
        return "a generator given init_genrand's words by set_state does not draw what manual_seed's draws"
    return None


@functools.cache
def _check_layout() -> None:
    problem = _layout_problem()
    if problem is not None:
        raise RuntimeError(
            f"torch {torch.__version__}: its CPU generator state is not the MT19937 layout crepe writes keys into "
            f"({problem}); refusing to draw DP noise from a generator that may be weakly seeded (crepe/dp/secret_rng.py)"
        )


def keyed_generator(key: bytes, name: str) -> torch.Generator:
    """A CPU torch.Generator whose whole MT19937 state is expanded from `key` (see above).
    RuntimeError if this torch's generator state does not have the expected layout."""
    _check_layout()
    state = _pack(mt19937_words(key, name))
    g = torch.Generator()
    g.set_state(state)
    if not torch.equal(g.get_state(), state):  # set_state must keep every word it was given
        raise RuntimeError(f"torch {torch.__version__}: Generator.set_state did not keep the state it was given")
    return g
