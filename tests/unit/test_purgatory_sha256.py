"""The purgatory's SHA-256 (purgatory/x86_64/sha256.c), compiled for the host, agrees
with hashlib: every length 0..200, the padding boundaries, random data, a few MiB, and
the same messages fed in pieces."""

from __future__ import annotations

import ctypes
import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .purgatory_support import build_host_library


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return build_host_library(Path(tmp_path_factory.mktemp("purgatory-host")))


def c_sha256(lib: ctypes.CDLL, data: bytes) -> bytes:
    out = (ctypes.c_uint8 * 32)()
    lib.host_sha256(data, len(data), out)
    return bytes(out)


def c_sha256_chunked(lib: ctypes.CDLL, data: bytes, chunk: int) -> bytes:
    out = (ctypes.c_uint8 * 32)()
    lib.host_sha256_chunked(data, len(data), chunk, out)
    return bytes(out)


def test_fips_180_2_examples(lib: ctypes.CDLL) -> None:
    # FIPS 180-2 appendix B.1 and B.2 (one and two blocks), plus the empty message
    assert c_sha256(lib, b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert c_sha256(lib, b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").hex() == (
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    )
    assert c_sha256(lib, b"").hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_every_length_up_to_200_and_the_block_boundaries(lib: ctypes.CDLL) -> None:
    rng = random.Random(10)
    for n in [*range(201), 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 191, 192, 1000, 4096]:
        data = rng.randbytes(n)
        assert c_sha256(lib, data) == hashlib.sha256(data).digest(), n


def test_a_few_mib(lib: ctypes.CDLL) -> None:
    rng = random.Random(3)
    for n in (1 << 20, 3 * (1 << 20) + 17):
        data = rng.randbytes(n)
        assert c_sha256(lib, data) == hashlib.sha256(data).digest(), n


def test_zero_pages_like_a_kernel_tail(lib: ctypes.CDLL) -> None:
    data = bytes(2 << 20)
    assert c_sha256(lib, data) == hashlib.sha256(data).digest()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), chunk=st.integers(min_value=1, max_value=130))
def test_random_inputs_whole_and_in_pieces(lib: ctypes.CDLL, data: bytes, chunk: int) -> None:
    expected = hashlib.sha256(data).digest()
    assert c_sha256(lib, data) == expected
    assert c_sha256_chunked(lib, data, chunk) == expected
