"""The machinery every benchmark shares: cells in fresh processes, best-of-N, table, targets, JSON.

Vocabulary
----------
* A **case** (:class:`Case`) is one way of moving messages: a transport (``Ring``, a
  ``multiprocessing.Queue``, a pyzmq socket pair...) plus a producer and a consumer function.
* A **cell** is a case run at one message size with a number of producer processes; a
  **sample** (:class:`Sample`) is one timed run of a cell; a **measurement**
  (:class:`Measurement`) is a cell's samples and the best of them.
* A **group** names the cells that are compared with each other (e.g. ``"1 producer, 64 B"``);
  the table prints one block per group and the ratio of every row to each baseline row.

Running a cell (:func:`run_cell`)
---------------------------------
1. In the parent, ``case.open(spec, ctx)`` creates the transport and returns an :class:`Opened`
   (``handle`` passed to every child, ``close`` called by the parent when the cell is over,
   whatever happened).
2. One consumer process and ``spec.producers`` producer processes start from the chosen
   :mod:`multiprocessing` context (default ``forkserver`` with the benchmark's modules preloaded,
   so every child is a fresh process that inherits none of the parent's state and pays no
   import cost; ``--start-method`` picks ``fork`` or ``spawn`` instead).
3. Each producer calls ``case.producer(handle, spec, gate, index)``: it sends ``spec.warmup``
   messages, calls ``gate.wait()``, then sends ``spec.count`` messages. The consumer calls
   ``case.consumer(handle, spec, gate) -> Sample``: it receives ``spec.warmup_total`` messages,
   takes ``t0 = gate.wait()`` (a barrier of all the cell's processes; it returns
   ``time.perf_counter()`` at release), receives ``spec.total`` messages and returns
   ``Sample(messages, nbytes, perf_counter() - t0)``. Time is measured on the consumer side,
   from the start barrier to the last message received. ``gate.finish()`` is a second barrier
   for transports that must not disconnect before the consumer has read everything (pyzmq).
4. Children report through a ``multiprocessing.Queue`` (results and remote tracebacks). The
   parent waits at most ``timeout`` seconds, then joins every child with a timeout and kills
   whatever is left: a cell can fail (:class:`CellError`) but never hangs the run.

A case with ``producers=0`` is a single-process reference (e.g. memcpy): the consumer does the
whole work and still times itself after ``gate.wait()``.

Several consumers (``measure(..., consumers=N)``, ``Spec.consumers``; broadcast subscribers, work
queue consumers): N consumer processes run ``case.consumer`` (the barriers count every
process), each returns its own Sample, and :func:`combine_samples` sums their messages and
bytes over the longest consumer's time; ``Case.delivery`` says whether each consumer gets every
message (``"each"``), the consumers share them (``"shared"``) or may lose some (``"lossy"``,
reported in ``Sample.dropped``).

Measuring (:func:`measure`)
---------------------------
Pilot runs (starting at ``initial_count`` messages, growing until one lasts a fifth of a sample)
give the rate; the count is then scaled so that a sample lasts ``settings.seconds`` (about 1 s; 0.15 s with ``--quick``), and ``settings.repeat``
samples are taken, each in fresh processes. The reported figure is the **best** sample (highest
msgs/s): on a shared, noisy machine interference only ever slows a run down, so the fastest run
is the closest to the code's own cost. The median and every sample are kept in the JSON.

Reporting
---------
* :func:`print_table` prints msgs/s, GB/s (10^9 bytes per second) and ``x<baseline>`` ratios.
* :class:`Target` is one PASS/FAIL/SKIP line; :func:`ratio_target` and friends build the usual
  kinds; :func:`evaluate_targets` prints them.
* :func:`machine_info` (CPU model, cores, memory, kernel, Python, package versions, git commit)
  and :func:`write_json` write everything to ``--json`` (default ``benchmarks/results/<name>.json``).
* :func:`add_common_arguments` adds ``--quick``, ``--repeat``, ``--json``, ``--start-method``,
  ``--only``, ``--seconds``; :meth:`Settings.from_args` reads them back.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Case",
    "CellError",
    "Gate",
    "Measurement",
    "Opened",
    "Results",
    "Sample",
    "Settings",
    "Spec",
    "Target",
    "add_common_arguments",
    "combine_samples",
    "evaluate_targets",
    "format_size",
    "machine_info",
    "make_context",
    "measure",
    "parse_size",
    "print_machine",
    "print_table",
    "ratio_target",
    "run_cell",
    "write_json",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# How long a child waits at the start barrier before giving up (the others crashed or hang).
BARRIER_TIMEOUT = 120.0
# Joining children after a cell: they should be exiting already.
JOIN_TIMEOUT = 10.0


# -- command line ----------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Add the options every benchmark understands to ``parser`` (the sub-command ``name``)."""
    parser.add_argument("--quick", action="store_true", help="short runs, one sample (a smoke test)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="samples per cell, best reported (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="S",
        help="target duration of a sample (default 1.0; 0.15 with --quick)",
    )
    parser.add_argument(
        "--json",
        default=str(RESULTS_DIR / f"{name}.json"),
        metavar="PATH",
        help="where to write the results (default: %(default)s; '-' for none)",
    )
    parser.add_argument(
        "--start-method",
        choices=("forkserver", "spawn", "fork"),
        default="forkserver",
        help="how cell processes start (default %(default)s: fresh processes, modules preloaded)",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="WORDS",
        help="comma-separated words; run only cases whose name contains one",
    )


@dataclass(frozen=True)
class Settings:
    """The common options, resolved."""

    name: str
    quick: bool
    repeat: int
    seconds: float
    json_path: Path | None
    start_method: str
    only: tuple[str, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace, name: str) -> Settings:
        quick = bool(args.quick)
        repeat = args.repeat if args.repeat is not None else (1 if quick else 3)
        if repeat < 1:
            raise SystemExit("--repeat must be >= 1")
        seconds = args.seconds if args.seconds is not None else (0.15 if quick else 1.0)
        json_path = None if args.json in ("-", "") else Path(args.json)
        only = tuple(w.strip().lower() for w in (args.only or "").split(",") if w.strip())
        return cls(name, quick, repeat, seconds, json_path, args.start_method, only)

    def selected(self, case_name: str) -> bool:
        return not self.only or any(word in case_name.lower() for word in self.only)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}


def parse_size(text: str) -> int:
    """``"64"``, ``"4K"``, ``"1MiB"``, ``"64M"`` -> bytes (binary units)."""
    text = text.strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :]
    if not digits or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 64, 4K, 1M, 64MiB)")
    return int(digits) * _SIZE_UNITS[unit]


def format_size(n: int) -> str:
    """64 -> '64 B', 4096 -> '4 KiB', 1048576 -> '1 MiB' (exact binary units when they fit)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


# -- cells -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What one run of a cell does; handed to every child."""

    size: int  # bytes per message
    count: int  # timed messages per producer
    warmup: int  # untimed messages per producer, before the start barrier
    producers: int  # producer processes (0: a single-process reference)
    options: dict[str, Any] = field(default_factory=dict)
    consumers: int = 1  # consumer processes (see Case.delivery for what each one receives)

    @property
    def total(self) -> int:
        """Timed messages the consumer receives (with several consumers: see Case.delivery)."""
        return self.count * max(self.producers, 1)

    @property
    def warmup_total(self) -> int:
        return self.warmup * max(self.producers, 1)


@dataclass(frozen=True)
class Sample:
    """One timed run, as measured by the consumer."""

    messages: int
    nbytes: int
    seconds: float
    dropped: int = 0  # messages sent but never delivered (lossy transports: pyzmq PUB/SUB)

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else math.inf

    @property
    def gb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds > 0 else math.inf


@dataclass(frozen=True)
class Opened:
    """A transport created in the parent: ``handle`` goes to every child, ``close`` runs at the end."""

    handle: Any
    close: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Case:
    """One way of moving messages. The callables must be module-level (they are pickled)."""

    name: str
    # Called in the parent with the spec and the multiprocessing context the children use.
    open: Callable[[Spec, Any], Opened]
    consumer: Callable[[Any, Spec, Gate], Sample]
    producer: Callable[[Any, Spec, Gate, int], None] | None = None
    # Returns why the case cannot run (a missing package...), or None.
    unavailable: Callable[[], str | None] = lambda: None
    # Largest number of producers the transport supports correctly (None: any).
    max_producers: int | None = None
    # Options merged into Spec.options (per case; a benchmark adds per-cell ones).
    options: dict[str, Any] = field(default_factory=dict)
    # True when the payload bytes are not moved (in-place writes): GB/s is then the size the
    # records carry, not a copy rate, and the table prints it in parentheses.
    logical_bytes: bool = False
    # With several consumers (Spec.consumers): "each" (broadcast: every consumer receives
    # spec.total), "shared" (work queue: their sum is spec.total) or "lossy" (each receives at
    # most spec.total and reports the rest in Sample.dropped). See combine_samples.
    delivery: str = "each"


class CellError(RuntimeError):
    """A cell failed: a child raised (its traceback is in the message), died, or timed out."""


class Gate:
    """The start (and optional finish) barrier of a cell, as seen by a child."""

    def __init__(self, start: Any, finish: Any) -> None:
        self._start = start
        self._finish = finish

    def wait(self) -> float:
        """Wait for every process of the cell; return ``time.perf_counter()`` at release."""
        self._start.wait(BARRIER_TIMEOUT)
        return time.perf_counter()

    def finish(self) -> None:
        """Wait until every process of the cell calls ``finish`` (after the timed part).

        For transports that lose messages when a sender disconnects early (pyzmq drops what
        the receiving side has not read when a PUSH peer goes away): producers call it before
        closing, the consumer after its last message. A case uses it in all its roles or none.
        """
        self._finish.wait(BARRIER_TIMEOUT)


def _child_main(
    role: str,
    index: int,
    function: Callable[..., Any],
    handle: Any,
    spec: Spec,
    barriers: tuple[Any, Any],
    results: Any,
) -> None:
    try:
        gate = Gate(*barriers)
        if role == "consumer":
            sample = function(handle, spec, gate)
            results.put(("consumer", index, sample))
        else:
            function(handle, spec, gate, index)
            results.put(("producer", index, None))
    except BaseException:
        for barrier in barriers:
            with contextlib.suppress(Exception):
                barrier.abort()  # release the others at once instead of after BARRIER_TIMEOUT
        results.put(("error", f"{role} {index}", traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)
    results.close()
    results.join_thread()


def make_context(settings: Settings, preload: Sequence[str] = ()) -> Any:
    """The multiprocessing context for ``settings.start_method``; preloads modules in a forkserver."""
    ctx = mp.get_context(settings.start_method)
    if settings.start_method == "forkserver":
        available = []
        for module in preload:
            try:
                importlib.import_module(module)
            except ImportError:
                continue
            available.append(module)
        ctx.set_forkserver_preload(available)
    return ctx


def run_cell(ctx: Any, case: Case, spec: Spec, timeout: float) -> Sample:
    """Run ``case`` once with ``spec`` in fresh processes; return the consumer's :class:`Sample`.

    Raises :class:`CellError` if a child fails, dies or the cell takes longer than ``timeout``
    seconds. Every child is gone and ``Opened.close`` has run when this returns or raises.
    """
    spec = dataclasses.replace(spec, options={**case.options, **spec.options})
    opened = case.open(spec, ctx)
    processes: list[Any] = []
    results = ctx.Queue()
    succeeded = False
    try:
        parties = spec.producers + spec.consumers
        barriers = (ctx.Barrier(parties), ctx.Barrier(parties))
        for index in range(spec.consumers):
            processes.append(
                ctx.Process(
                    target=_child_main,
                    args=("consumer", index, case.consumer, opened.handle, spec, barriers, results),
                    name=f"{case.name} consumer" + (f" {index}" if spec.consumers > 1 else ""),
                    daemon=True,
                )
            )
        for index in range(spec.producers):
            assert case.producer is not None, f"case {case.name!r} has no producer"
            processes.append(
                ctx.Process(
                    target=_child_main,
                    args=("producer", index, case.producer, opened.handle, spec, barriers, results),
                    name=f"{case.name} producer {index}",
                    daemon=True,
                )
            )
        for process in processes:
            process.start()
        sample = _collect(case, spec, processes, results, timeout)
        succeeded = True
        return sample
    finally:
        for process in processes:
            _stop(process, graceful=succeeded)
        with contextlib.suppress(Exception):
            results.close()
            results.cancel_join_thread()
        opened.close()


def _collect(case: Case, spec: Spec, processes: list[Any], results: Any, timeout: float) -> Sample:
    deadline = time.monotonic() + timeout
    samples: list[Sample] = []
    acknowledged = 0
    while len(samples) < spec.consumers or acknowledged < spec.producers:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CellError(f"{case.name}: no result within {timeout:.0f} s (killed)")
        try:
            kind, who, payload = results.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            # A child that died without reporting (killed, segfault) must not cost the timeout.
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                with contextlib.suppress(queue.Empty):
                    kind, who, payload = results.get(timeout=1.0)
                    if kind == "error":
                        raise CellError(f"{case.name}: {who} failed:\n{payload}") from None
                raise CellError(f"{case.name}: {dead[0].name} exited with code {dead[0].exitcode}") from None
            continue
        if kind == "error":
            raise CellError(f"{case.name}: {who} failed:\n{payload}")
        if kind == "consumer":
            samples.append(payload)
        else:
            acknowledged += 1
    return combine_samples(case, spec, samples)


def combine_samples(case: Case, spec: Spec, samples: Sequence[Sample]) -> Sample:
    """The cell's :class:`Sample` from its consumers' (one each); checks what they received.

    One consumer: its sample, which must hold ``spec.total`` messages (``"lossy"``: at most
    that many). Several: messages, bytes and drops are summed and the time is the longest
    consumer's (each times itself from the same start barrier), so ``msgs_per_s`` is the total
    delivered rate. ``case.delivery`` says what each must have received (see :class:`Case`).
    """
    counts = [s.messages for s in samples]
    if case.delivery == "shared":
        if sum(counts) != spec.total:
            raise CellError(
                f"{case.name}: the consumers received {counts} messages, expected {spec.total} in all"
            )
    elif case.delivery == "lossy":
        if any(n > spec.total for n in counts):
            raise CellError(f"{case.name}: a consumer received {counts} messages, more than {spec.total}")
    elif any(n != spec.total for n in counts):
        who = "the consumer" if len(counts) == 1 else "the consumers"
        shown = counts[0] if len(counts) == 1 else counts
        raise CellError(
            f"{case.name}: {who} received {shown} messages, expected {spec.total}"
            + ("" if len(counts) == 1 else " each")
        )
    if len(samples) == 1:
        return samples[0]
    return Sample(
        messages=sum(counts),
        nbytes=sum(s.nbytes for s in samples),
        seconds=max(s.seconds for s in samples),
        dropped=sum(s.dropped for s in samples),
    )


def _stop(process: Any, graceful: bool) -> None:
    if process.pid is None:
        return  # never started
    if graceful:
        process.join(JOIN_TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join(JOIN_TIMEOUT)


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Measurement:
    """A cell's samples (best = highest msgs/s), or why it has none."""

    group: str
    case: str
    size: int
    producers: int
    samples: list[Sample] = field(default_factory=list)
    count: int = 0
    note: str = ""  # "skipped: ..." or "failed: ..."
    logical_bytes: bool = False  # see Case.logical_bytes
    consumers: int = 1

    @property
    def ok(self) -> bool:
        return bool(self.samples) and not self.note

    @property
    def best(self) -> Sample | None:
        return max(self.samples, key=lambda s: s.msgs_per_s) if self.samples else None

    @property
    def msgs_per_s(self) -> float | None:
        best = self.best
        return best.msgs_per_s if best is not None and self.ok else None

    @property
    def gb_per_s(self) -> float | None:
        best = self.best
        return best.gb_per_s if best is not None and self.ok else None

    def to_json(self) -> dict[str, Any]:
        rates = [s.msgs_per_s for s in self.samples]
        return {
            "group": self.group,
            "case": self.case,
            "size": self.size,
            "producers": self.producers,
            "consumers": self.consumers,
            "count_per_producer": self.count,
            "note": self.note,
            "logical_bytes": self.logical_bytes,
            "best_msgs_per_s": self.msgs_per_s,
            "best_gb_per_s": self.gb_per_s,
            "median_msgs_per_s": statistics.median(rates) if rates and self.ok else None,
            "samples": [dataclasses.asdict(s) for s in self.samples],
        }


def measure(
    ctx: Any,
    case: Case,
    *,
    group: str,
    size: int,
    producers: int,
    settings: Settings,
    initial_count: int,
    options: dict[str, Any] | None = None,
    max_count: int | None = None,
    progress: bool = True,
    consumers: int = 1,
) -> Measurement:
    """Pilot runs, then ``settings.repeat`` samples of about ``settings.seconds`` each; never raises.

    ``initial_count`` is the first pilot's total message count (keep it small: the pilot count
    grows, up to 100x per step, until a pilot lasts a fifth of a sample); ``max_count`` caps the
    total of a sample. The warm-up is about 10% of a sample's
    messages (at least 2 per producer).
    """
    result = Measurement(
        group=group,
        case=case.name,
        size=size,
        producers=producers,
        logical_bytes=case.logical_bytes,
        consumers=consumers,
    )
    reason = case.unavailable()
    if reason is None and case.max_producers is not None and producers > case.max_producers:
        reason = f"supports at most {case.max_producers} producer(s)"
    if reason is not None:
        result.note = f"skipped: {reason}"
        _progress(progress, result)
        return result
    parts = max(producers, 1)

    def spec_for(total: int) -> Spec:
        per_producer = max(1, math.ceil(total / parts))
        warmup = max(2, min(per_producer // 10, 10_000))
        return Spec(
            size=size,
            count=per_producer,
            warmup=warmup,
            producers=producers,
            options=dict(options or {}),
            consumers=consumers,
        )

    try:
        # Pilot runs: grow the count until a run lasts long enough to give a trustworthy rate.
        total = max(parts, initial_count)
        for _ in range(4):
            pilot = run_cell(ctx, case, spec_for(total), timeout=120.0)
            if pilot.seconds >= settings.seconds / 5 or (max_count is not None and total >= max_count):
                break
            total = round(total * min(100.0, max(2.0, settings.seconds / 3 / max(pilot.seconds, 1e-6))))
            if max_count is not None:
                total = min(total, max_count)
        rate = pilot.msgs_per_s
        total = max(parts, round(rate * settings.seconds))
        if max_count is not None:
            total = min(total, max_count)
        spec = spec_for(total)
        result.count = spec.count
        expected = spec.total / rate
        for _ in range(settings.repeat):
            result.samples.append(run_cell(ctx, case, spec, timeout=max(30.0, 20 * expected + 10)))
    except CellError as exc:
        result.note = f"failed: {exc}"
    _progress(progress, result)
    return result


def _progress(enabled: bool, m: Measurement) -> None:
    if not enabled:
        return
    if m.ok:
        rates = ", ".join(_si(s.msgs_per_s) for s in m.samples)
        text = f"{_si(m.msgs_per_s or 0)} msgs/s  {m.gb_per_s or 0:.3f} GB/s  (samples {rates}; {m.count}/producer)"
    else:
        text = m.note.splitlines()[0] if m.note else "no samples"
    print(f"  [{m.group}] {m.case}: {text}", file=sys.stderr, flush=True)
    if m.note.startswith("failed"):
        print(m.note, file=sys.stderr, flush=True)


class Results:
    """Lookups over a run's measurements (by group and case name)."""

    def __init__(self, measurements: Iterable[Measurement]) -> None:
        self.measurements = list(measurements)
        self._index = {(m.group, m.case): m for m in self.measurements}

    def get(self, group: str, case: str) -> Measurement | None:
        return self._index.get((group, case))

    def rate(self, group: str, case: str) -> float | None:
        m = self.get(group, case)
        return m.msgs_per_s if m is not None else None

    def groups(self) -> list[str]:
        return list(dict.fromkeys(m.group for m in self.measurements))


# -- table -----------------------------------------------------------------------------------


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


format_rate = _si  # 1.23M, 456k: rates in tables and notes


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base <= 0:
        return "-"
    ratio = value / base
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:.0f}x"


def print_table(
    results: Results,
    baselines: Sequence[tuple[str, str]],
    file: Any = None,
    *,
    rate_title: str = "msgs/s",
) -> str:
    """Print (and return) one block per group: msgs/s, GB/s, and the ratio to each baseline.

    msgs/s and GB/s are the best sample's (``Measurement.msgs_per_s``); ``rate_title`` names the
    rate column (e.g. ``"ops/s"`` for a benchmark whose messages are operations).
    ``baselines`` is a list of ``(case name, column title)``; a baseline missing from a group
    prints ``-``. The text is Markdown-compatible (a pipe table per group).
    """
    file = sys.stdout if file is None else file
    name_width = max([len(m.case) for m in results.measurements] + [10])
    header = ["case".ljust(name_width), rate_title.rjust(9), "GB/s".rjust(8)]
    header += [f"vs {title}".rjust(max(9, len(title) + 3)) for _, title in baselines]
    lines: list[str] = []
    for group in results.groups():
        lines.append(f"\n{group}\n")
        lines.append("| " + " | ".join(header) + " |")
        lines.append(
            "|" + "|".join("-" * (len(h) + 1) + ("-" if i == 0 else ":") for i, h in enumerate(header)) + "|"
        )
        for m in (m for m in results.measurements if m.group == group):
            rate, gbps = m.msgs_per_s, m.gb_per_s
            if rate is None or gbps is None:
                cells = [m.case.ljust(name_width), "-".rjust(9), "-".rjust(8)]
                cells += ["-".rjust(len(h)) for h in header[3:]]
                lines.append(
                    "| " + " | ".join(cells) + f" |  {m.note.splitlines()[0][:70] if m.note else ''}"
                )
                continue
            shown = f"{gbps:.0f}" if gbps >= 100 else f"{gbps:.3f}"
            if m.logical_bytes:
                shown = f"({shown})"
            cells = [m.case.ljust(name_width), _si(rate).rjust(9), shown.rjust(8)]
            for (base_case, _), h in zip(baselines, header[3:], strict=True):
                cells.append(_ratio(rate, results.rate(group, base_case)).rjust(len(h)))
            lines.append("| " + " | ".join(cells) + " |")
    if any(m.logical_bytes for m in results.measurements):
        lines.append("\n(GB/s in parentheses: bytes the records carry, written in place, not copied.)")
    text = "\n".join(lines) + "\n"
    print(text, file=file, flush=True)
    return text


# -- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    """One PASS/FAIL line. ``status`` is PASS, FAIL or SKIP (a figure it needs is missing)."""

    description: str
    status: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def ratio_target(
    description: str, numerator: float | None, denominator: float | None, minimum: float, unit: str = "x"
) -> Target:
    """PASS if ``numerator / denominator >= minimum``; SKIP if either figure is missing."""
    if numerator is None or denominator is None or denominator <= 0:
        return Target(description, "SKIP", "a figure it needs was not measured")
    ratio = numerator / denominator
    shown = f"{ratio:.0%}" if unit == "%" else f"{ratio:.3g}x"
    wanted = f"{minimum:.0%}" if unit == "%" else f"{minimum:.2f}x"
    return Target(
        description,
        "PASS" if ratio >= minimum else "FAIL",
        f"{shown} (need >= {wanted}; {_si(numerator)} vs {_si(denominator)} msgs/s)",
    )


def evaluate_targets(targets: Sequence[Target], file: Any = None) -> str:
    """Print (and return) the PASS/FAIL lines."""
    file = sys.stdout if file is None else file
    lines = ["targets (ratios from this run):"]
    for t in targets:
        lines.append(f"  {t.status:4}  {t.description}: {t.detail}")
    text = "\n".join(lines) + "\n"
    print(text, file=file, flush=True)
    return text


# -- machine and JSON ------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info(packages: Sequence[str] = ("mmipc",)) -> dict[str, Any]:
    """CPU model, cores (online and usable), memory, /dev/shm free, kernel, Python, versions, git."""
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    shm_free = None
    with contextlib.suppress(OSError):
        shm_free = shutil.disk_usage("/dev/shm").free
    load = None
    with contextlib.suppress(OSError, AttributeError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {
        "cpu": _cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": usable,
        "memory_bytes": _mem_total(),
        "dev_shm_free_bytes": shm_free,
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": {name: _version(name) for name in packages},
        "git": _git_commit(),
        "load_average_at_start": load,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def print_machine(info: dict[str, Any], settings: Settings, file: Any = None) -> None:
    file = sys.stdout if file is None else file
    mem = info.get("memory_bytes")
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    print(
        f"machine: {info['cpu']}, {info['cores_usable']} usable cores, "
        f"{(mem or 0) / 2**30:.1f} GiB RAM, {info['kernel']}, {info['python']}\n"
        f"packages: {packages}; git {info.get('git')}; load average {info.get('load_average_at_start')}\n"
        f"method: {settings.start_method} children, consumer-side timing from a start barrier, "
        f"best of {settings.repeat} sample(s) of ~{settings.seconds:g} s after a pilot run",
        file=file,
        flush=True,
    )


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON to ``path`` (creating its directory); None writes nothing."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    print(f"results written to {path}", flush=True)
