"""Wall time and peak memory per phase of a run: what every front door records and `sync-splat eval` reports.

A run's work falls into four phases: `render` (the bridge's f, scene to views), `denoise` (the UNet and ControlNet, or
the prior), `codec` (the VAE's encode and decode) and `fit` (the bridge's g, views to scene). `Timed` wraps the
denoiser and the bridge so each call is charged to its phase; time outside every phase (the sampler's arithmetic,
conditions, export) is the rest of the run's total.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PHASES = ("render", "denoise", "codec", "fit")
DENOISER_PHASES = {"predict_eps": "denoise", "encode": "codec", "decode": "codec"}
"""The denoiser's methods and the phase each is charged to."""
BRIDGE_PHASES = {"project": "render", "unproject": "fit"}
"""The bridge's methods and the phase each is charged to."""

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    """A resettable high-water mark of the memory a run holds on `device`.

    On CUDA it is the peak of the tensors torch allocated. On the CPU it is the process's peak resident set (Linux's
    VmHWM, reset through /proc/self/clear_refs); where the system offers neither, `peak_bytes` is None.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._can_reset = device.type == "cuda" or _resettable_rss()

    def reset(self) -> None:
        if not self._can_reset:
            return
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _CLEAR_REFS.write_text("5")

    def peak_bytes(self) -> int | None:
        """The high-water mark since the last reset."""
        if not self._can_reset:
            return None
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return _rss_high_water()


def _rss_high_water() -> int | None:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _resettable_rss() -> bool:
    try:
        return _rss_high_water() is not None and _CLEAR_REFS.exists()
    except OSError:
        return False


@dataclass(frozen=True)
class PhaseReport:
    """A run's wall seconds and calls per phase, its peak memory per phase (GiB; None where not measurable), and
    its total seconds and peak."""

    total_s: float
    seconds: dict[str, float]
    calls: dict[str, int]
    peak_gib: dict[str, float | None]
    total_peak_gib: float | None
    memory: str
    """What the peaks measure: 'cuda allocated' or 'process resident'."""

    @property
    def other_s(self) -> float:
        """What no phase was charged: sampling arithmetic, conditions, export."""
        return self.total_s - sum(self.seconds.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "total_s": self.total_s, "other_s": self.other_s, "seconds": self.seconds, "calls": self.calls,
            "peak_gib": self.peak_gib, "total_peak_gib": self.total_peak_gib, "memory": self.memory,
        }  # fmt: skip

    def summary(self) -> str:
        """One line: total and seconds per phase."""
        parts = ", ".join(f"{phase} {self.seconds[phase]:.3g}" for phase in PHASES)
        return f"{self.total_s:.3g} s in all ({parts}, other {self.other_s:.3g})"


class PhaseTimer:
    """Exclusive wall time, calls and peak memory per phase: a phase called inside another one (the VAE inside the
    colour fit) is charged to itself only. On CUDA the device is synchronised at every boundary, so kernels are
    charged to the phase that queued them.

    Args:
        device: where the timed work runs.
        clock: seconds since any fixed point (the tests pass a fake one).
    """

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = device
        self.clock = clock
        self.memory = PeakMemory(device)
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.peaks: dict[str, int] = {}
        self._stack: list[str] = []
        self._mark = clock()
        self._started = self._mark
        self._total_peak = 0
        self.memory.reset()

    def _switch(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = self.clock()
        peak = self.memory.peak_bytes()
        if self._stack:
            phase = self._stack[-1]
            self.seconds[phase] += now - self._mark
            if peak is not None:
                self.peaks[phase] = max(self.peaks.get(phase, 0), peak)
        if peak is not None:
            self._total_peak = max(self._total_peak, peak)
        self.memory.reset()
        self._mark = now

    def wrap(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function`, charging each call to `phase`."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._switch()
            self.calls[phase] += 1
            self._stack.append(phase)
            try:
                return function(*args, **kwargs)
            finally:
                self._switch()
                self._stack.pop()

        return timed

    def report(self) -> PhaseReport:
        """The run so far: its total is the time since the timer was made."""
        self._switch()
        measured = self.memory.peak_bytes() is not None
        return PhaseReport(
            total_s=self.clock() - self._started,
            seconds={phase: self.seconds.get(phase, 0.0) for phase in PHASES},
            calls={phase: self.calls.get(phase, 0) for phase in PHASES},
            peak_gib={phase: self.peaks[phase] / 2**30 if phase in self.peaks else None for phase in PHASES},
            total_peak_gib=self._total_peak / 2**30 if measured else None,
            memory="cuda allocated" if self.device.type == "cuda" else "process resident",
        )


class Timed:
    """A proxy of `target` whose methods named in `phases` are charged to their phase of `timer`."""

    def __init__(self, target: Any, timer: PhaseTimer, phases: dict[str, str]) -> None:
        self._target, self._timer, self._phases = target, timer, phases

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        return self._timer.wrap(self._phases[name], value) if name in self._phases else value
