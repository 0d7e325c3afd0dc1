"""Final answers: extract them from completions and check them against the ground truth.

Two scorers (``SCORERS``):

- ``"math-verify"`` (our default): :func:`extract_answer` (last ``\\boxed{}``, else GSM8K's
  ``#### x``, else the last number), then :func:`verify`, a symbolic comparison with the
  math-verify library (``0.5`` equals ``\\frac{1}{2}``, ``1,000`` equals ``1000``).
- ``"exact"``: :func:`exact_match`, the paper's official scorer (PAPER.md section 5): the last
  ``\\boxed{}`` compared with the ground truth as normalised strings, nothing symbolic.

Why a worker process. math-verify bounds its own run time with ``signal.alarm``, which only
works in the main thread and replaces (then cancels) any SIGALRM handler and alarm the caller
has set; and sympy can spend minutes on answers such as ``9^{9^{9^{9}}}``. So :func:`verify`
never runs math-verify in the calling process: a small persistent worker process (started on
first use, ``python -c`` loading only this file, so it imports neither torch nor the rest of
the package) parses and compares, under its own timer in its own main thread. The caller waits
at most ``timeout_s`` plus a short grace; a worker that does not answer by then is killed and
replaced on the next call, and the answer counts as wrong. Integers and identical strings are
decided in-process without the worker. Results are cached per (answer, ground truth, timeout).
If the worker cannot be started at all, :func:`verify` falls back to comparing normalised
strings and plain numbers, with one warning.

The module imports only the standard library; math-verify is imported inside the worker.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import queue
import re
import subprocess
import sys
import threading
import warnings
from fractions import Fraction

SCORERS = ("math-verify", "exact")
"""Names accepted by :func:`score`."""

DEFAULT_TIMEOUT_S = 5.0
"""Seconds math-verify may spend on one comparison (math-verify's own default)."""

KILL_GRACE_S = 0.5
"""Extra seconds the caller waits beyond ``timeout_s`` before killing an unresponsive worker."""

STARTUP_TIMEOUT_S = 60.0
"""Seconds to wait for a new worker to import math-verify and report ready."""

MAX_START_FAILURES = 3
"""After this many failed worker starts in a row, stop trying and use the string fallback."""

CACHE_SIZE = 1 << 16
"""Distinct (answer, ground truth, timeout) results kept by :func:`verify`."""

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_BOX_ARGUMENT = re.compile(r"[^\s${}]+")
_GSM8K_MARKER = "####"
# A number not glued to a word or another number: -3, 1,000, 2.5 (a sentence's final period is left out).
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_INTEGER = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d+)")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}|([+-]?\d+)/(\d+)")


# Extraction -------------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """The content of the last complete, non-empty ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``.

    Braces nest (``\\boxed{\\frac{1}{2}}``), escaped braces ``\\{ \\}`` do not count, and the
    bare form ``\\boxed 5`` is read up to the next space or ``$``. A box that is never closed
    (a truncated completion) or empty (``\\boxed{}`` echoed from the prompt) is skipped in
    favour of the one before it.

    Example:
        >>> last_boxed(r"first \\boxed{1}, then \\boxed{\\frac{3}{4}}.")
        '\\\\frac{3}{4}'
        >>> last_boxed("no box") is None
        True
    """
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        content = _box_argument(text, match.end())
        if content:
            return content
    return None


def _box_argument(text: str, start: int) -> str | None:
    position = start
    while position < len(text) and text[position].isspace():
        position += 1
    if position == len(text):
        return None
    if text[position] != "{":
        bare = _BARE_BOX_ARGUMENT.match(text, position)
        return bare.group(0).rstrip(".") if bare else None
    depth = 0
    index = position
    while index < len(text):
        character = text[index]
        if character == "\\":
            index += 2  # an escaped character, \{ or \} included, never opens or closes a group
            continue
        if character == "{":
            depth += 1
        elif character == "}":
            depth -= 1
            if depth == 0:
                return text[position + 1 : index].strip()
        index += 1
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in a completion, or None when there is none.

    Tried in order: the last ``\\boxed{...}`` (see :func:`last_boxed`); the text after the last
    GSM8K marker ``#### `` (to the end of its line); the last number in the text (``-3``,
    ``1,000`` and ``2.5`` are read whole, a sentence's final period is not part of it). Numbers
    from the last two are returned without thousands commas or a leading ``$``.

    Example:
        >>> extract_answer(r"So the answer is \\boxed{\\frac{1}{2}}.")
        '\\\\frac{1}{2}'
        >>> extract_answer("She pays 3 * 4 = 12 dollars.\\n#### 1,012")
        '1012'
        >>> extract_answer("Adding them gives 1,000. Minus 3 gives 997.")
        '997'
        >>> extract_answer("I do not know") is None
        True
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    marker = text.rfind(_GSM8K_MARKER)
    if marker != -1:
        after = text[marker + len(_GSM8K_MARKER) :].strip().split("\n", 1)[0]
        marked = _clean_number(after.strip().rstrip(".").strip())
        if marked:
            return marked
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "")
    return None


def _clean_number(answer: str) -> str:
    # "$1,012" -> "1012"; anything that is not a plain number is returned as it is.
    candidate = answer.lstrip("$").strip()
    if _PLAIN_NUMBER.fullmatch(candidate):
        return candidate.replace(",", "")
    return answer


# Exact (official) scoring ------------------------------------------------------------------------


def normalize_exact(answer: str) -> str:
    """The string form the exact scorer compares.

    Remove every ``\\left`` and ``\\right`` and all whitespace; then strip ``$`` from the start
    and ``$`` and ``.`` from the end (so ``$42$.`` and ``$42.$`` both give ``42``). Nothing else
    (``\\dfrac`` stays ``\\dfrac``, ``1,000`` stays ``1,000``).

    Example:
        >>> normalize_exact(r" $\\left( 1, 2 \\right)$. ")
        '(1,2)'
    """
    normalized = "".join(answer.replace("\\left", "").replace("\\right", "").split())
    return normalized.lstrip("$").rstrip("$.")


def exact_match(text: str, ground_truth: str | int) -> bool:
    """The paper's official scorer: last ``\\boxed{}`` equals the ground truth as normalised strings.

    Both sides go through :func:`normalize_exact`; there is no symbolic equivalence (``0.5`` does
    not match ``\\frac{1}{2}``) and no fallback when the completion has no box. An integer
    ground truth (AIME25 stores JSON ints) is converted with ``str()`` first: the official code
    compares it unconverted, so it never matches there; that bug is deliberately not reproduced.

    Example:
        >>> exact_match(r"The answer is $\\boxed{70}$.", 70)
        True
        >>> exact_match(r"\\boxed{0.5}", r"\\frac{1}{2}")
        False
    """
    boxed = last_boxed(text)
    if boxed is None:
        return False
    return normalize_exact(boxed) == normalize_exact(str(ground_truth))


# Symbolic verification ---------------------------------------------------------------------------


def verify(predicted: str | None, ground_truth: str | int, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether an extracted answer equals the ground truth, symbolically (math-verify).

    Never raises on the answer's content and never hangs: parse failures, math-verify errors
    and comparisons slower than ``timeout_s`` all count as wrong. Safe from any thread and
    while the caller has its own SIGALRM handler (math-verify runs in a worker process; see
    the module docstring). Both sides are given to math-verify as ``\\boxed{...}`` after
    stripping ``$`` delimiters and a trailing period. Results (timeouts included) are cached
    per ``(predicted, ground_truth, timeout_s)``; calls from several threads share one worker
    and take turns.

    Args:
        predicted: an answer as :func:`extract_answer` returns it (not a whole completion);
            None counts as wrong.
        ground_truth: the reference answer; ints are converted with ``str()``.
        timeout_s: seconds math-verify may spend; the call returns within about this plus
            ``KILL_GRACE_S`` (a worker's first start, about a second, is not counted).

    Returns:
        True when math-verify finds the two equal.

    Raises:
        ValueError: if ``timeout_s`` is not a positive number.

    Example:
        >>> verify("0.5", r"\\frac{1}{2}"), verify("1,000", 1000), verify("41", 42)
        (True, True, False)
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if predicted is None:
        return False
    predicted_text = _for_math_verify(str(predicted))
    ground_truth_text = _for_math_verify(str(ground_truth))
    if not predicted_text or not ground_truth_text:
        return False
    quick = _quick_decision(predicted_text, ground_truth_text)
    if quick is not None:
        return quick
    try:
        return _cached_symbolic_equal(predicted_text, ground_truth_text, float(timeout_s))
    except _VerifierUnavailable as error:
        _warn_fallback(str(error))
        return _plain_equal(predicted_text, ground_truth_text)


def _for_math_verify(answer: str) -> str:
    text = answer.strip().strip("$").strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def _quick_decision(predicted: str, ground_truth: str) -> bool | None:
    # Decided without math-verify, with the result it would give: same string, or two integers.
    if normalize_exact(predicted) == normalize_exact(ground_truth):
        return True
    predicted_integer = _integer_digits(predicted)
    ground_truth_integer = _integer_digits(ground_truth)
    if predicted_integer is not None and ground_truth_integer is not None:
        return predicted_integer == ground_truth_integer
    return None


def _integer_digits(text: str) -> str | None:
    # "-1,000" -> "-1000", "007" -> "7", "-0" -> "0"; None when text is not an integer.
    match = _INTEGER.fullmatch(text)
    if match is None:
        return None
    digits = match.group(2).replace(",", "").lstrip("0") or "0"
    return digits if digits == "0" or match.group(1) != "-" else "-" + digits


def _plain_equal(predicted: str, ground_truth: str) -> bool:
    """The fallback without math-verify: same normalised string, or equal plain numbers/fractions."""
    if normalize_exact(predicted) == normalize_exact(ground_truth):
        return True
    predicted_value = _plain_value(predicted)
    return predicted_value is not None and predicted_value == _plain_value(ground_truth)


def _plain_value(text: str) -> Fraction | None:
    text = text.replace(" ", "")
    if _PLAIN_NUMBER.fullmatch(text):
        return Fraction(text.replace(",", ""))
    match = _FRACTION.fullmatch(text)
    if match is None:
        return None
    if match.group(2) is not None:
        sign, numerator, denominator = match.group(1), match.group(2), match.group(3)
    else:
        sign, numerator, denominator = "", match.group(4), match.group(5)
    if int(denominator) == 0:
        return None
    value = Fraction(int(numerator), int(denominator))
    return -value if sign == "-" else value


_fallback_warned = False


def _warn_fallback(reason: str) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"math-verify is unavailable ({reason}); answers are compared as normalised strings and plain "
            "numbers only (check that `python -c 'import math_verify'` works in this environment)",
            RuntimeWarning,
            stacklevel=3,
        )


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_symbolic_equal(predicted: str, ground_truth: str, timeout_s: float) -> bool:
    # lru_cache does not store exceptions, so an unavailable worker is asked again next time.
    return _VERIFIER.equal(predicted, ground_truth, timeout_s)


def shutdown_verifier() -> None:
    """Stop the background math-verify process now (it starts again on the next :func:`verify`).

    Called at interpreter exit; call it yourself to free the process earlier.

    Example:
        >>> shutdown_verifier()
    """
    _VERIFIER.close()


# Scoring ----------------------------------------------------------------------------------------


def score(
    completion: str, ground_truth: str | int, scorer: str = "math-verify", *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[str | None, bool]:
    """Score one completion: the answer the scorer read from it, and whether it is correct.

    Args:
        completion: the model's full output text.
        ground_truth: the reference answer (ints are converted with ``str()``).
        scorer: ``"math-verify"`` (:func:`extract_answer` + :func:`verify`) or ``"exact"``
            (:func:`last_boxed` + :func:`exact_match`).
        timeout_s: passed to :func:`verify`.

    Returns:
        ``(extracted answer or None, correct)``.

    Raises:
        ValueError: for an unknown scorer.

    Example:
        >>> score(r"... so \\boxed{0.5}", r"\\frac{1}{2}")
        ('0.5', True)
        >>> score(r"... so \\boxed{0.5}", r"\\frac{1}{2}", scorer="exact")
        ('0.5', False)
    """
    if scorer == "math-verify":
        answer = extract_answer(completion)
        return answer, verify(answer, ground_truth, timeout_s=timeout_s)
    if scorer == "exact":
        return last_boxed(completion), exact_match(completion, ground_truth)
    raise ValueError(f"unknown scorer {scorer!r}; use one of {', '.join(SCORERS)}")


# The worker process -----------------------------------------------------------------------------

_WORKER_BOOT = (
    "import importlib.util, sys; "
    "spec = importlib.util.spec_from_file_location('_autodeco_answers_worker', sys.argv[1]); "
    "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; "
    "spec.loader.exec_module(module); module._serve()"
)
"""Loads this file alone in the worker (importing ``autodeco`` would import torch)."""


class _VerifierUnavailable(Exception):
    """The worker could not be started or died before answering."""


class _Worker:
    """One running worker: its process and a thread that queues the lines it writes."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.owner_pid = os.getpid()
        self.replies: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, name="autodeco-verify-reader", daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.replies.put(json.loads(line))
            except ValueError:
                continue  # not a protocol line
        self.process.stdout.close()
        self.replies.put(None)  # end of output: the worker exited

    def alive(self) -> bool:
        return self.owner_pid == os.getpid() and self.process.poll() is None

    def send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def stop(self, wait_s: float = 1.0) -> None:
        if self.owner_pid != os.getpid():
            return  # a forked child must not stop its parent's worker
        try:
            self.process.stdin.close()
            self.process.wait(timeout=wait_s)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        if self.owner_pid != os.getpid():
            return
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # our end of the pipe: leaving it to the garbage collector warns


class _Verifier:
    """The process-wide verifier: starts, restarts and talks to one worker, one request at a time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._next_id = 0
        self._start_failures = 0
        self._exit_hook = False

    def equal(self, predicted: str, ground_truth: str, timeout_s: float) -> bool:
        with self._lock:
            worker = self._ready_worker()
            self._next_id += 1
            request_id = self._next_id
            try:
                worker.send({"id": request_id, "gold": ground_truth, "pred": predicted, "timeout": timeout_s})
            except OSError:
                self._discard(kill=True)
                raise _VerifierUnavailable("the math-verify worker stopped unexpectedly") from None
            while True:
                try:
                    reply = worker.replies.get(timeout=timeout_s + KILL_GRACE_S)
                except queue.Empty:
                    self._discard(kill=True)  # stuck in C code its own timer cannot interrupt
                    return False
                if reply is None:
                    self._discard(kill=True)  # it crashed on this input (out of memory, say)
                    return False
                if reply.get("id") == request_id:
                    return bool(reply.get("correct"))

    def _ready_worker(self) -> _Worker:
        if self._worker is not None and self._worker.alive():
            return self._worker
        if self._worker is not None:
            self._discard(kill=True)
        if self._start_failures >= MAX_START_FAILURES:
            raise _VerifierUnavailable(f"the math-verify worker failed to start {self._start_failures} times")
        if not sys.executable:
            self._start_failures = MAX_START_FAILURES
            raise _VerifierUnavailable("sys.executable is empty, so no worker process can be started")
        if not self._exit_hook:
            atexit.register(self.close)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=self._forget_after_fork)
            self._exit_hook = True
        try:
            worker = _Worker()
        except OSError as error:
            self._start_failures += 1
            raise _VerifierUnavailable(f"cannot start the math-verify worker: {error}") from None
        try:
            hello = worker.replies.get(timeout=STARTUP_TIMEOUT_S)
        except queue.Empty:
            hello = None
        if not hello or not hello.get("ready"):
            worker.kill()
            self._start_failures += 1
            reason = (hello or {}).get("error") or "no ready message"
            raise _VerifierUnavailable(f"the math-verify worker did not start ({reason})")
        self._start_failures = 0
        self._worker = worker
        return worker

    def _discard(self, kill: bool) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill() if kill else worker.stop()

    def _forget_after_fork(self) -> None:
        # A forked child starts its own worker; the parent's stays the parent's (the lock may have been held).
        self._lock = threading.Lock()
        self._worker = None

    def close(self) -> None:
        if self._lock.acquire(timeout=KILL_GRACE_S):
            try:
                self._discard(kill=False)
            finally:
                self._lock.release()
        elif self._worker is not None:
            self._worker.kill()  # a request is still running (a daemon thread at exit): do not wait for it


_VERIFIER = _Verifier()


# Inside the worker process ----------------------------------------------------------------------


class _SoftTimeout(BaseException):
    """Raised by the worker's own timer; a BaseException so that math-verify's ``except Exception`` lets it through."""


def _serve() -> None:
    """The worker's main loop: one JSON request per line on stdin, one JSON reply per line out."""
    import logging
    import signal

    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # anything else printing to stdout lands on stderr, not in the protocol
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller; we exit when stdin closes
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout disabled" notices: we time it
    try:
        import math_verify
    except Exception as error:  # noqa: BLE001 - reported to the caller, which falls back
        _reply(channel, {"ready": False, "error": f"{type(error).__name__}: {error}"})
        return
    _symbolic_equal(math_verify, "1", "1", DEFAULT_TIMEOUT_S)  # load the parsers before saying ready
    _reply(channel, {"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            correct = _symbolic_equal(math_verify, request["pred"], request["gold"], request["timeout"])
        except _SoftTimeout:
            correct = False
        except Exception:  # noqa: BLE001 - any failure inside math-verify or sympy means "not shown equal"
            correct = False
        _reply(channel, {"id": request["id"], "correct": correct})


def _reply(channel, message: dict) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def _symbolic_equal(math_verify, predicted: str, ground_truth: str, timeout_s: float) -> bool:
    import signal

    armed = [True]

    def on_timer(signum, frame):
        if armed[0]:  # a signal handled after the comparison finished is ignored
            raise _SoftTimeout()

    timed = hasattr(signal, "setitimer")  # not on Windows: there only the caller's kill applies
    if timed:
        signal.signal(signal.SIGALRM, on_timer)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        # math-verify's own signal-based timeouts are off: they would cancel this timer.
        gold = math_verify.parse(f"\\boxed{{{ground_truth}}}", parsing_timeout=None)
        target = math_verify.parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
        return bool(gold and target and math_verify.verify(gold, target, timeout_seconds=None))
    finally:
        armed[0] = False
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
