"""MATH-style answers: LaTeX compared by meaning, safely from any thread or worker process.

`grading.answers_match(pred, gold, "math")` compares two plain numbers as numbers
(`grading.numbers_equal`) and hands anything else to `math_equal(pred, gold)`, which cleans both
answers (spacing commands, ``\\left``/``\\right``, degrees, percent and dollar signs, a trailing
``\\text{ units}``), then decides in this order: identical text; multiple-choice letters
(``\\text{(C)}``, ``(C)``, ``C``); words (``\\text{Evelyn}``); base-n numerals (``1011_2``, compared as
written); otherwise Math-Verify (fractions, radicals, intervals, tuples, sets, matrices, equations).

Why a worker process: Math-Verify limits its time with ``signal.alarm``, which only works in the main
thread; elsewhere it raises, and frameworks that swallow the error score every answer 0. Here
Math-Verify runs with its own timeouts off, in one long-lived child per process, and the parent
waits at most `TIMEOUT_S` for each verdict; a child that runs over is killed (the answer counts as
not equal, with a warning) and restarted on the next call. The child is a `subprocess`, not a
`multiprocessing` child, so daemonic workers (DataLoader, Pool) may use it too. Where no child can
start, Math-Verify runs in-process without a time limit, behind the same size guards.

Simplified: percent and degree signs are dropped (``25\\%`` equals ``25``, ``30^\\circ`` equals
``30``); a unit is only recognised as a trailing ``\\text{...}`` after a number; base-n numerals must be
written the same way; Math-Verify's verdict is taken as is, with sympy's numeric tolerance.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path

from mathrl.grading.base import MAX_DIGITS, TEXT_COMMAND, text_key

TIMEOUT_S = 3.0  # per comparison (both parses and the verify); the answer is False past it
STARTUP_TIMEOUT_S = 60.0  # importing sympy on a busy machine takes seconds
MAX_CHARS = 400  # longer answers are not compared symbolically
_WORKER_MEMORY = 4 << 30  # address-space cap for the child: a runaway sympy call fails, not the host
log = logging.getLogger(__name__)

# Tokens that change how an answer looks, not what it is: dropped, or (spaces) made one space.
_DROP = re.compile(
    r"\\left(?![a-zA-Z])\.?|\\right(?![a-zA-Z])\.?|(?<!\\)\\[!,;:>]|\\displaystyle"
    r"|\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\\%|%|\\\$|\$"
)
_SPACE = re.compile(r"(?<!\\)\\ |~|\\q?quad")  # not the "\\ " of a matrix row break
_WRAPPER = re.compile(r"^(?:\\\(|\\\[)(.*)(?:\\\)|\\\])$", re.S)
_UNIT = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\s*\^\s*\{?\d\}?)?$")
_CHOICE = re.compile(r"^\(([A-Ea-e])\)$|^([A-E])$")  # (C), (c) or C; a bare "e" is Euler's number
_WORDS = re.compile(r"^[A-Za-z][A-Za-z ,.'-]*$")
_BASE_N = re.compile(r"^[0-9A-Z]+_\{?\d+\}?$")
_SUBSCRIPT = re.compile(r"_\{(\w+)\}")
# Size guards: sympy would compute 10^{10^{10}}, 9^9^9, (10^5)! or a 6-digit exponent before comparing.
# Only numeric towers: e^{x^2} or x^2y^3 are cheap symbols.
_TOWER = re.compile(r"\^\s*\{[^{}]*\d\s*\^|\^\s*\(?\s*[\d.]+\s*\)?\s*\^|\^\s*\{?\s*[-+]?\d{6,}|\d{" + str(MAX_DIGITS) + ",}")
_FACTORIAL = re.compile(r"!\s*!|(?<!\d)!|\d{4,}\s*!")


def clean(text: str) -> str:
    """An answer without display-only LaTeX: ``\\left( 3, \\dfrac{\\pi}{2} \\right)`` -> ``( 3, \\frac{\\pi}{2} )``."""
    text = text.strip()
    while (m := _WRAPPER.match(text)) is not None:
        text = m.group(1).strip()
    text = _SPACE.sub(" ", _DROP.sub("", re.sub(r"\\[dt]frac", r"\\frac", text)))
    text = _SUBSCRIPT.sub(r"_\1", text).strip().rstrip(".").strip()
    unitless = _UNIT.sub("", text).strip()
    return unitless or text


def _choice(text: str) -> str | None:
    """The letter of a multiple-choice answer: \\text{(C)}, \\mathrm{(C)}, (C) or C; else None."""
    m = _CHOICE.match("".join(TEXT_COMMAND.sub(r"\1", text).split()))
    return (m.group(1) or m.group(2)).upper() if m else None


def _words(text: str) -> str | None:
    """The phrase, when the answer is words (\\text{Evelyn}, or 3+ letters of plain text), else None."""
    if TEXT_COMMAND.fullmatch(text) or (_WORDS.match(text) and sum(c.isalpha() for c in text) >= 3):
        key = text_key(text)
        return key if re.search(r"[a-z]{2}", key) else None
    return None


def _too_hard(text: str) -> bool:
    return len(text) > MAX_CHARS or _TOWER.search(text) is not None or _FACTORIAL.search(text) is not None


def math_equal(pred: str, gold: str) -> bool:
    """Is `pred` the same MATH-style answer as `gold`? Never raises."""
    try:
        p, g = clean(pred), clean(gold)
        if not p or not g:
            return False
        if "".join(p.split()) == "".join(g.split()):
            return True
        for kind in (_choice, _words):
            pk, gk = kind(p), kind(g)
            if pk is not None or gk is not None:
                return pk == gk
        if _BASE_N.match(p) or _BASE_N.match(g) or _too_hard(p) or _too_hard(g):
            return False  # base-n numerals were compared as text above
        return _verify(p, g)
    except Exception:  # noqa: BLE001 - the grader must never raise on model text
        return False


def verify_here(pred: str, gold: str) -> bool:
    """Math-Verify in this process, with its signal-based timeouts off (the caller limits time)."""
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))


# -- the worker process ------------------------------------------------------------------------------

STATS = {"starts": 0, "timeouts": 0, "in_process": 0}
_state: dict = {"proc": None, "pid": None, "broken": False}
_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child must not share its parent's worker (two writers on one pipe): it starts its own."""
    global _lock
    _lock = threading.Lock()
    _state.update(proc=None, pid=None, broken=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _read_line(proc: subprocess.Popen, timeout: float) -> bytes | None:
    """One reply line within `timeout` seconds; None on timeout or when the worker died."""
    deadline, buf = time.monotonic() + timeout, b""
    with selectors.DefaultSelector() as sel:  # not select.select: fds above 1024 in big trainers
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                return None
            buf += chunk
    return buf.strip()


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def _start() -> subprocess.Popen | None:
    root = str(Path(__file__).resolve().parents[2])  # so the child imports this very mathrl
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from mathrl.grading.math_answers import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True,  # Ctrl-C in the terminal stops the parent, which then ends the child
        )
    except OSError:
        return None
    if _read_line(proc, STARTUP_TIMEOUT_S) != b"ready":
        _stop(proc)
        return None
    STATS["starts"] += 1
    return proc


def _ask(pred: str, gold: str) -> bool | None:
    """The worker's verdict; None when no worker could be started."""
    proc = _state["proc"] if _state["pid"] == os.getpid() else None
    if proc is None or proc.poll() is not None:
        proc = _start()
        _state.update(proc=proc, pid=os.getpid())
        if proc is None:
            return None
    try:
        proc.stdin.write(json.dumps([pred, gold]).encode() + b"\n")
        proc.stdin.flush()
    except (OSError, ValueError):
        _state["proc"] = None
        return None
    reply = _read_line(proc, TIMEOUT_S)
    if reply is None:
        _stop(proc)
        _state["proc"] = None
        STATS["timeouts"] += 1
        log.warning("math answer comparison ran over %.1f s (%.60r vs %.60r): counted as not equal", TIMEOUT_S, pred, gold)
        return False
    return reply == b"1"


def _verify(pred: str, gold: str) -> bool:
    if os.name == "posix" and not _state["broken"]:
        with _lock:
            verdict = _ask(pred, gold)
            if verdict is None:  # one retry: the worker may have died between calls
                verdict = _ask(pred, gold)
            if verdict is not None:
                return verdict
            _state["broken"] = True
            log.warning("no Math-Verify worker process could start: comparing in-process without a time limit")
    STATS["in_process"] += 1
    return verify_here(pred, gold)


@atexit.register
def _shutdown() -> None:
    if _state["pid"] == os.getpid():
        _stop(_state["proc"])


def serve() -> None:
    """The worker: one JSON [pred, gold] per line in, "1" or "0" per line out."""
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever sympy prints goes to stderr, not into the replies
    logging.disable(logging.WARNING)  # Math-Verify warns that its timeout is off: the parent is the timeout
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY or soft > _WORKER_MEMORY:
            resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY, hard))
    except (ImportError, ValueError, OSError):
        pass
    import math_verify  # noqa: F401 - imported before "ready" so the first answer is not slowed by it

    parent = os.getppid()

    def orphan_watch() -> None:  # a parent that died mid-answer never closes our stdin for us to see
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphan_watch, daemon=True).start()

    replies.write(b"ready\n")
    for line in sys.stdin.buffer:
        try:
            pred, gold = json.loads(line)
            ok = verify_here(str(pred), str(gold))
        except Exception:  # noqa: BLE001 - a bad answer is a "0", never a dead worker
            ok = False
        replies.write(b"1\n" if ok else b"0\n")
