"""A small mutation fuzzer for kdumpd's readers of outside input.

Each :class:`Target` turns one byte string into one call of a real reader (a file
below a scratch sysroot, a TOML file, an environment, a replay file, a D-Bus call, a
uevent).  The oracle is the project's error contract: a case either passes or raises
a :class:`~kdumpd.core.errors.KdumpdError` whose text is one line; any other
exception, a multi-line error text, or a case that runs longer than the per-case time
limit (SIGALRM) is a finding.  Findings are grouped into classes (exception type and
the innermost kdumpd frame), and each class keeps its first input for reproduction.

Mutations are deterministic for a given seed: byte flips, inserted/replaced
"interesting" tokens (invalid UTF-8, UTF-8-encoded lone surrogates, NULs, non-ASCII
digits, 5,000-digit numbers, huge sizes, very long paths), deletions, duplications
and splices of two seeds.  The seeds are real inputs (captured sysfs fixtures,
documented examples), so most cases stay close to valid input and reach deep code.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType

from kdumpd.core.errors import KdumpdError

#: Tokens inserted by the mutator.  Targets add their own (key names, directives).
COMMON_TOKENS: tuple[bytes, ...] = (
    b"\x00",
    b"\n",
    b"\r\n",
    b"\xff",
    b"\x80",
    b"\xc3\x28",  # invalid UTF-8 continuation
    b"\xed\xa0\x80",  # a lone surrogate, UTF-8-encoded (invalid UTF-8)
    b"\\ud800",  # a lone surrogate as a JSON escape
    b"\\udfff\\ud800",
    "\u00b2".encode(),  # '²': str.isdigit() is True, int() refuses it
    "\u0663".encode(),  # ARABIC-INDIC DIGIT THREE: int() accepts it
    "\uff11".encode(),  # FULLWIDTH DIGIT ONE
    b"9" * 5000,  # beyond Python's int-string digit limit (4,300)
    b"f" * 5000,
    b"1" * 25,
    b"18446744073709551615",  # u64 max
    b"18446744073709551616",
    b"4294967296",
    b"1610612736",  # 1.5 GiB
    b"ffffffffffffffff",
    b"10000000000000000",
    b"-1",
    b"0",
    b"1e309",
    b"NaN",
    b"Infinity",
    b"-0",
    b"0x10",
    b"+1",
    b"1_000",
    b" ",
    b"\t",
    b",",
    b"-",
    b":",
    b"=",
    b'"',
    b"'",
    b"\\",
    b"$",
    b"${",
    b"[",
    b"]",
    b"{",
    b"}",
    b"#",
    b"a/" * 3000,  # a path longer than PATH_MAX
    b"x" * 300,  # a file name longer than NAME_MAX
    b"../",
    b"/",
)


class CaseTimeout(BaseException):
    """Raised by SIGALRM inside a case that ran past the per-case limit (a hang)."""


@dataclass(frozen=True)
class Target:
    """``run(data)`` feeds one input to a reader; ``seeds`` are valid inputs to start
    from; ``tokens`` are target-specific insertions; ``setup`` (a context manager
    factory) prepares whatever ``run`` needs and yields it."""

    name: str
    setup: Callable[[], contextlib.AbstractContextManager[Callable[[bytes], int | None]]]
    seeds: Callable[[], Sequence[bytes]]
    tokens: tuple[bytes, ...] = ()
    max_len: int = 1 << 16


@dataclass
class Finding:
    key: str
    count: int
    first_input: bytes
    traceback: str


@dataclass
class Result:
    target: str
    cases: int = 0
    seconds: float = 0.0
    kdumpd_errors: int = 0  # rejections: raised, or logged and skipped by the reader
    findings: dict[str, Finding] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings


class Mutator:
    def __init__(self, rng: random.Random, seeds: Sequence[bytes], tokens: Sequence[bytes]):
        self.rng = rng
        self.seeds = list(seeds) or [b""]
        self.tokens = list(tokens) + list(COMMON_TOKENS)

    def _token(self) -> bytes:
        return self.rng.choice(self.tokens)

    def mutate(self, data: bytes, max_len: int) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
            op = rng.randrange(9)
            pos = rng.randrange(len(buf) + 1)
            if op == 0 and buf:  # flip a bit
                i = rng.randrange(len(buf))
                buf[i] ^= 1 << rng.randrange(8)
            elif op == 1 and buf:  # random byte
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            elif op in (2, 3):  # insert a token
                buf[pos:pos] = self._token()
            elif op == 4 and buf:  # replace a run of digits/letters with a token
                end = pos
                while end < len(buf) and chr(buf[end]).isalnum():
                    end += 1
                buf[pos:end] = self._token()
            elif op == 5 and buf:  # delete a range
                end = min(len(buf), pos + rng.randrange(1, 32))
                del buf[pos:end]
            elif op == 6 and buf:  # duplicate a range
                end = min(len(buf), pos + rng.randrange(1, 64))
                buf[pos:pos] = buf[pos:end] * rng.randrange(1, 4)
            elif op == 7:  # splice another seed's tail
                other = rng.choice(self.seeds)
                cut = rng.randrange(len(other) + 1)
                buf[pos:] = other[cut:]
            elif op == 8 and buf:  # truncate
                del buf[pos:]
        return bytes(buf[:max_len])

    def next_input(self, max_len: int) -> bytes:
        seed = self.rng.choice(self.seeds)
        if self.rng.random() < 0.02:
            return seed
        return self.mutate(seed, max_len)


def _classify(err: BaseException) -> str:
    """``Type at file:function`` of the innermost frame inside kdumpd (or the last)."""
    tb: TracebackType | None = err.__traceback__
    where = "?"
    while tb is not None:
        code = tb.tb_frame.f_code
        if "/kdumpd/" in code.co_filename:
            where = f"{code.co_filename.rsplit('/kdumpd/', 1)[1]}:{code.co_name}"
        tb = tb.tb_next
    return f"{type(err).__name__} at kdumpd/{where}"


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def fire(_sig: int, _frame: FrameType | None) -> None:
        raise CaseTimeout(f"case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_target(
    target: Target,
    *,
    cases: int,
    seed: int = 0,
    time_limit: float = 2.0,
    max_seconds: float | None = None,
    progress: Callable[[Result], None] | None = None,
) -> Result:
    """Run ``cases`` mutated inputs through ``target`` (stop early at ``max_seconds``)."""
    rng = random.Random(f"{target.name}:{seed}")
    result = Result(target.name)
    mutator = Mutator(rng, target.seeds(), target.tokens)
    start = time.monotonic()
    with target.setup() as run, _alarm(time_limit):
        while result.cases < cases:
            data = mutator.next_input(target.max_len)
            problem: BaseException | None = None
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            try:
                # readers that log and skip bad parts (replay lines, uevents) return
                # how many they rejected that way
                result.kdumpd_errors += run(data) or 0
            except KdumpdError as err:
                result.kdumpd_errors += 1
                text = str(err)
                if "\n" in text or not text.strip():
                    problem = ValueError(f"error text is not one line: {text[:200]!r}")
                    problem.__traceback__ = err.__traceback__
            except CaseTimeout as err:
                problem = err
            except Exception as err:
                problem = err
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            result.cases += 1
            if problem is not None:
                key = _classify(problem)
                found = result.findings.get(key)
                if found is None:
                    tb = "".join(
                        traceback.format_exception(type(problem), problem, problem.__traceback__)
                    )
                    result.findings[key] = Finding(key, 1, data, tb)
                else:
                    found.count += 1
            if progress is not None and result.cases % 1000 == 0:
                result.seconds = time.monotonic() - start
                progress(result)
            if max_seconds is not None and time.monotonic() - start > max_seconds:
                break
    result.seconds = time.monotonic() - start
    return result
