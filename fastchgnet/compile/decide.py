"""Compile or not: turn capture on where it pays over the run that was asked for.

Compiling costs seconds up front (a cold CPU build of a prediction graph takes about a minute
on 2 cores; loading it from the on-disk store about one) and saves a fraction of every model
call after it. A run of ``calls`` model calls that take ``eager_seconds`` each compiles when

    expected compile seconds < calls * eager_seconds * (1 - COMPILED_FRACTION)

The expected compile seconds come from ``CompiledPotential.expected_compile_seconds``: zero for
a shape this process holds, the load for one the store holds, else ``cold_estimate``: the
median of the compile times the store has on record on this machine, or
``COLD_PREDICT_SECONDS`` (scaled for the CPU's instruction set) before there is any. Every
decision carries a one-line reason that names both sides, which the caller prints.

On a CPU two captures are weighed (``choose_capture``): inductor's (fused kernels, a build of
tens of seconds) and TorchScript's (the same traced graph run op by op in C++, a build of about
three seconds, ``SCRIPT_CALL_OVERHEAD``), and the one that saves the most net of its build runs.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from fastchgnet.compile.store import CompiledStore

T = TypeVar("T")

#: Compiled model-call time as a fraction of eager on a CPU. bench/bench_md.py (quiet, 2
#: threads, the padded MD shape with its headroom) measured 0.80 on 8 atoms and 1.37 and 1.32
#: on 32 and 64 atoms (padding and single-threaded generated kernels cost more than the
#: compile saves there); earlier code measured 0.58-0.79. The best case, so a compile is
#: chosen only where it clearly pays; ``run_md`` still drops a compiled calculator that
#: measures slower.
COMPILED_FRACTION = 0.8
#: What one MD force call costs on a CPU (bench/bench_md.py, 2 quiet threads): an eager call
#: pays ``EAGER_CALL_OVERHEAD`` (Python and operator dispatch: 7.5-8.9 ms for a 2-atom cell
#: without angles) plus its work; a compiled call pays ``COMPILED_CALL_OVERHEAD`` (pad, one
#: program call, unpad) plus the work of its padded shape at ``COMPILED_WORK_FRACTION`` of
#: eager's per entry, which depends on the CPU's vector instructions (torch's
#: ``get_cpu_capability``). Fitted on LiMnO2 (8 atoms), Li9Co7O16 (32) and a 64-atom LiMnO2
#: cell. AVX2 (an AMD EPYC): stop 26 gave 0.70, 0.79 and 0.75 (shapes of 1.37-1.42 padded
#: entries per real one), stop 27 0.84, 0.85 and 0.83 (shapes of 1.13-1.21,
#: ``md.dynamics.MD_COMPILE``), and a whole 2000-step compiled run on 32 atoms 0.77. AVX-512
#: (a Sapphire Rapids Xeon, stop 32): 0.68, 0.54 and 0.58 (shapes of 1.13-1.21; compiled calls
#: 0.55, 0.62 and 0.61 of eager); stops 42-43 on the same Xeon, after eager's own speed-ups:
#: 32 and 64-atom compiled calls 0.57 of eager, 0.53 and 0.60 per padded entry of eager calls
#: of 51 and 47 ms (stop 44) in shapes of 1.21 and 1.08. The highest of the newest is kept, and
#: the AVX2 one for any other CPU: a wrong "on" costs a 20-35 s build, a wrong "off" only part
#: of a saving. At 0.68, stop 44's 2000-step runs stayed eager on 32 and 64 atoms (5.1x and 5.9x
#: the reference) where stop 43's compiled ones ran 7.7x and 8.4x.
EAGER_CALL_OVERHEAD = 0.008
COMPILED_CALL_OVERHEAD = 0.0015
#: An AMD EPYC with AVX-512 (``cpu_kind`` "AVX512-AMD", stop 51, 2 threads; Zen 4 runs
#: AVX-512 as two 256-bit halves): compiled MD steps 50.3 and 43.5 ms against 59.4 and 60.0 ms
#: eager on 32 and 64 atoms, in shapes of 1.21 and 1.08: 0.79 and 0.75 per padded entry.
COMPILED_WORK_FRACTION = {"AVX512": 0.6, "AVX512-AMD": 0.79, "AVX2": 0.84}
#: Cold compile of a CPU prediction graph when the store has no compile time on record:
#: ``bench/bench_compile.py --programs predict --threads 2`` measured 29.8-35.6 s for the
#: reference architecture on 2 quiet cores, everything empty (stops 26 and 27; 45-75 s before
#: the header warm-up and the side-by-side object builds).
COLD_PREDICT_SECONDS = 35.0
#: That cold compile on a CPU of each instruction set over ``COLD_PREDICT_SECONDS`` (the AVX2
#: entry for a CPU not measured): the AVX-512 Xeon built the MD graph in 20.1-25.7 s cold inside
#: bench_md (stops 42-43; 24.7-29.0 s in stop 40's slower hour), bench_compile's predict graph
#: in 21.0-21.7 s (stops 42-44), and stops 45-46's 32 / 64-atom MD graphs in 19.8-21.2 /
#: 15.1-16.2 s: 0.6 (21 s). At 0.8 (28 s) a 64-atom run, where inductor's ~31 s saving then
#: nets ~3 s, went to TorchScript's ~5 s net and ran 92.4 and 109.6 s whole against 78-86 s
#: with inductor (stop 46), since TorchScript builds in the background.
COLD_PREDICT_SCALE = {"AVX512": 0.6, "AVX2": 1.0}

#: A TorchScript call of a CPU prediction graph (``CompiledPotential(backend="torchscript")``,
#: ``compile.script``): the traced graph run op by op in C++, so the call pays
#: ``SCRIPT_CALL_OVERHEAD`` instead of ``EAGER_CALL_OVERHEAD``, plus the work of its shape at
#: eager's rate per entry (no kernel is fused; its graphs take any sizes, so the shape is the
#: graphs' own, ``padding`` 1). Fitted on LiMnO2 (8 atoms, AVX-512, 2 threads, stop 45): MD
#: force calls took 7.2 ms (6.95 ms in the graph) against 10.1 ms eager, steps 7.7-7.8 ms
#: against 10.7-10.9 ms (stop 44's fixed-shape graphs: 8.2-8.5 ms steps, 1.15 padded entries
#: per real one).
SCRIPT_CALL_OVERHEAD = 0.0051
#: The work of a TorchScript call over eager's per entry, by ``cpu_kind`` (1.0, the fit above,
#: for a CPU not listed). On the AVX-512 AMD EPYC of stop 51 (2 threads) TorchScript MD steps
#: took 46.4-47.6 ms against 57.0-58.5 ms eager on 32 atoms and 46.3-49.2 against 57.3-59.6 ms
#: on 64, 11.7 against 14.7 ms on 8: about 0.81 of eager at every size, where the Xeon's
#: 64-atom TorchScript run was level with eager; with ``SCRIPT_CALL_OVERHEAD``, 0.84 per entry.
SCRIPT_WORK_FRACTION = {"AVX512-AMD": 0.84, "AVX2": 1.0}
#: A TorchScript build: the symbolic trace (about 2 s warm on the reference architecture, the
#: first in a process 0.6 s more for importing dynamo) and scripting it (0.3-0.4 s); a
#: default 8-atom MD run built in 3.1 s.
SCRIPT_BUILD_SECONDS = 3.2
#: How much slower an eager call runs while a TorchScript graph builds in a child process
#: (``compile.background``: on one torch thread fewer where the child takes a core): LiMnO2 MD
#: calls on 2 cores took 11.2-13.2 ms then against 9.4 ms on both threads.
BACKGROUND_SLOWDOWN = 0.25
#: The capture backends a compile decision weighs on each device: TorchScript gains only the
#: per-op Python of a call, which is all a small CPU call has to lose; on a GPU the CUDA graph
#: of inductor's build removes the per-kernel launches too.
CAPTURE_BACKENDS = {"cpu": ("inductor", "torchscript")}

#: A compiled model call on a GPU over the eager one. On one H200 (``bench/gpu_check.sh``
#: stage g, stop 31) MD force calls took 4.91 against 21.32 ms on 12 atoms and 4.93 against
#: 21.43 ms on 96: 0.23. Eager calls of small structures there are bound by kernel launches,
#: which the recorded CUDA graph replays at once. 0.3 is kept, for other shapes' padding.
GPU_COMPILED_FRACTION = 0.3
#: Cold compile (inductor's Triton kernels) and CUDA-graph recording of an MD graph on a GPU:
#: about 42 s a shape on that H200 (stage g built two, made 200 timed calls and ran 200 MD
#: steps in 99 s).
COLD_GPU_PREDICT_SECONDS = 45.0


@dataclass(frozen=True)
class CompileDecision:
    """compile: whether to compile | reason: one line naming cost and saving | compile_seconds:
    expected compile cost, s | saved_seconds: expected saving over the run, s |
    eager_seconds: one eager call, s | backend: the capture it weighed ("inductor",
    "torchscript") | net_seconds: saved_seconds less the compile cost times the margin, s."""

    compile: bool
    reason: str
    compile_seconds: float
    saved_seconds: float
    eager_seconds: float
    backend: str = "inductor"
    net_seconds: float = 0.0


@functools.cache
def cpu_kind() -> str:
    """This CPU as the tables below key it: torch's name for its vector instructions ("AVX2",
    "AVX512", ...; ``torch.backends.cpu.get_cpu_capability``), "AVX512-AMD" for an AMD CPU
    with AVX-512 (Zen 4 runs it as two 256-bit halves, so inductor's kernels gain less there
    than on an Intel CPU, and TorchScript more; stop 51)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512" and cpu_vendor() == "AuthenticAMD":
        return "AVX512-AMD"
    return capability


def cpu_vendor() -> str:
    """The CPU's vendor id from /proc/cpuinfo ("GenuineIntel", "AuthenticAMD"); "" where
    there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def for_cpu(table: dict[str, T], capability: str | None = None) -> T:
    """``table``'s entry for a CPU of ``capability`` (``cpu_kind``'s names, e.g. "AVX2",
    "AVX512", "AVX512-AMD"; default: this machine's); the "AVX2" entry for a CPU the table
    has no entry for (a measured fit is kept per kind of CPU)."""
    if capability is None:
        capability = cpu_kind()
    return table.get(capability, table["AVX2"])


def work_fraction(capability: str | None = None) -> float:
    """``COMPILED_WORK_FRACTION`` for a CPU of ``capability`` (``for_cpu``)."""
    return for_cpu(COMPILED_WORK_FRACTION, capability)


def compiled_fraction(eager_seconds: float, padding: float, capability: str | None = None) -> float:
    """Expected seconds of a compiled CPU call over those of the eager one (at most 1: no
    gain), for a call that takes ``eager_seconds`` eagerly and whose padded shape holds
    ``padding`` entries (atoms + bonds + angles) per real one, on a CPU of ``capability``
    (``work_fraction``); see ``COMPILED_WORK_FRACTION``."""
    if eager_seconds <= 0:
        return 1.0
    work = max(eager_seconds - EAGER_CALL_OVERHEAD, 0.0)
    compiled = COMPILED_CALL_OVERHEAD + work_fraction(capability) * padding * work
    return min(1.0, compiled / eager_seconds)


def script_fraction(eager_seconds: float, padding: float, capability: str | None = None) -> float:
    """Expected seconds of a TorchScript CPU call over those of the eager one (at most 1), for
    a call that takes ``eager_seconds`` eagerly in a padded shape of ``padding`` entries per
    real one, on a CPU of ``capability`` (``for_cpu``); see ``SCRIPT_CALL_OVERHEAD`` and
    ``SCRIPT_WORK_FRACTION``."""
    if eager_seconds <= 0:
        return 1.0
    work = max(eager_seconds - EAGER_CALL_OVERHEAD, 0.0) * for_cpu(SCRIPT_WORK_FRACTION, capability)
    return min(1.0, (SCRIPT_CALL_OVERHEAD + padding * work) / eager_seconds)


def build_cost(seconds: float, fraction: float, background: bool) -> float:
    """Seconds a build of ``seconds`` adds to a run whose compiled calls take ``fraction`` of
    the eager ones: all of them in place. With ``background`` (where
    ``background.available_in_background``) the run goes on eagerly during the build, each
    call ``1 + BACKGROUND_SLOWDOWN`` times as long, where it would have run compiled: those
    seconds times ``1 - fraction / (1 + BACKGROUND_SLOWDOWN)``."""
    from fastchgnet.compile.background import available_in_background

    if background and available_in_background():
        return seconds * (1 - fraction / (1 + BACKGROUND_SLOWDOWN))
    return seconds


def capture_backends(device_type: str) -> tuple[str, ...]:
    """The backends a compile decision on ``device_type`` weighs (``CAPTURE_BACKENDS``;
    inductor alone elsewhere, and where this torch has no TorchScript)."""
    from fastchgnet.compile.script import available

    backends = CAPTURE_BACKENDS.get(device_type, ("inductor",))
    return backends if available() else tuple(b for b in backends if b != "torchscript")


def compiled_call_model(
    device_type: str,
    eager_seconds: float,
    padding: float,
    store: CompiledStore | None,
    backend: str = "inductor",
    background: bool = False,
) -> tuple[float, float]:
    """(compiled fraction, cold compile seconds) of a prediction call on ``device_type`` that
    takes ``eager_seconds`` eagerly, its padded shape holding ``padding`` entries per real
    one: with inductor, on a CPU ``compiled_fraction`` and ``cold_estimate(store)``; on CUDA
    ``GPU_COMPILED_FRACTION`` and ``COLD_GPU_PREDICT_SECONDS`` (the store keeps CPU packages
    only); elsewhere ``COMPILED_FRACTION`` and ``cold_estimate(store)``. With
    ``backend="torchscript"``: ``script_fraction`` and ``SCRIPT_BUILD_SECONDS``, fitted on a
    CPU, the one device ``capture_backends`` offers it on; with ``background`` its build runs
    in a child process (``build_cost``)."""
    if backend == "torchscript":
        fraction = script_fraction(eager_seconds, padding)
        return fraction, build_cost(SCRIPT_BUILD_SECONDS, fraction, background)
    if device_type == "cuda":
        return GPU_COMPILED_FRACTION, COLD_GPU_PREDICT_SECONDS
    if device_type == "cpu":
        return compiled_fraction(eager_seconds, padding), cold_estimate(store)
    return COMPILED_FRACTION, cold_estimate(store)


def cold_estimate(store: CompiledStore | None, program: str = "predict") -> float:
    """Expected seconds of a cold compile of ``program``: the median of the store's records
    on this machine, else ``COLD_PREDICT_SECONDS`` scaled for this CPU (``COLD_PREDICT_SCALE``)."""
    seen = store.compile_seconds_seen(program) if store is not None else []
    if seen:
        return statistics.median(seen)
    return COLD_PREDICT_SECONDS * for_cpu(COLD_PREDICT_SCALE)


def decide(
    calls: int,
    eager_seconds: float,
    compile_seconds: float,
    *,
    fraction: float = COMPILED_FRACTION,
    what: str = "run",
    margin: float = 1.0,
    backend: str | None = None,
) -> CompileDecision:
    """Whether ``calls`` model calls of ``eager_seconds`` each gain from compiling, which costs
    ``compile_seconds`` first and makes each call ``fraction`` as long; ``what`` names the run
    in the reason, and so does ``backend`` where given (None: inductor, unnamed). With
    ``margin`` > 1 the saving must be that many times the cost."""
    if calls < 0 or eager_seconds < 0 or compile_seconds < 0 or not 0 < fraction <= 1 or margin < 1:
        raise ValueError(
            f"need calls, eager_seconds, compile_seconds >= 0, 0 < fraction <= 1 and margin >= 1; "
            f"got {calls}, {eager_seconds}, {compile_seconds}, {fraction}, {margin}"
        )
    saved = calls * eager_seconds * (1 - fraction)
    worth = compile_seconds * margin < saved
    cost = f"build ~{compile_seconds:.1f} s" if compile_seconds else "already compiled"
    times = f" (must save {margin:g}x that)" if margin != 1 and compile_seconds else ""
    how = f" with {backend}" if backend else ""
    reason = (
        f"compile {'on' if worth else 'off'} for this {what}{how}: {cost}{times}, saves "
        f"~{saved:.1f} s over {calls} calls of {eager_seconds * 1e3:.0f} ms eager (compiled: "
        f"~{fraction:.2f} of that)"
    )
    net = saved - compile_seconds * margin
    return CompileDecision(
        worth, reason, compile_seconds, saved, eager_seconds, backend or "inductor", net
    )


def choose_capture(
    calls: int,
    eager_seconds: float,
    device_type: str,
    price: Callable[[str], tuple[float, float, T]],
    *,
    what: str = "run",
) -> tuple[CompileDecision, T]:
    """The ``decide`` of whichever of ``capture_backends(device_type)`` saves the most over
    ``calls`` calls net of its compile, ``price(backend)`` giving its (compiled fraction,
    compile seconds, what would run it: the caller's potential), and that third item; where
    none pays, the one that loses least (its ``compile`` False). Its reason ends with how the
    others were priced. On a CPU a short run of small structures pays for a TorchScript build
    of seconds where an inductor build of half a minute does not, and a long or large one the
    other way."""
    priced = []
    for backend in capture_backends(device_type):
        fraction, seconds, runner = price(backend)
        decision = decide(
            calls, eager_seconds, seconds, fraction=fraction, what=what, backend=backend
        )
        priced.append((decision, runner))
    best, runner = max(priced, key=lambda pair: pair[0].net_seconds)
    others = "; ".join(
        f"{d.backend}: build ~{d.compile_seconds:.1f} s, saves ~{d.saved_seconds:.1f} s"
        for d, _ in priced
        if d is not best
    )
    return (replace(best, reason=f"{best.reason} [{others}]") if others else best), runner
