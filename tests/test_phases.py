"""The phase timer every front door records a run with: exclusive time, calls and peak memory per phase."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sync_splat.apps.phases import PHASES, PeakMemory, PhaseTimer, Timed


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_phase_timer_charges_nested_phases_exclusively() -> None:
    clock = FakeClock()
    timer = PhaseTimer(torch.device("cpu"), clock=clock)
    fit = timer.wrap("codec", lambda: clock.advance(3.0))

    def render_body() -> str:
        clock.advance(2.0)
        fit()
        clock.advance(5.0)
        fit()
        return "done"

    assert timer.wrap("render", render_body)() == "done"
    clock.advance(11.0)  # outside every phase: charged to none
    report = timer.report()
    assert report.seconds == {"render": 7.0, "denoise": 0.0, "codec": 6.0, "fit": 0.0}
    assert report.calls == {"render": 1, "denoise": 0, "codec": 2, "fit": 0}
    assert report.total_s == 24.0
    assert report.other_s == 11.0
    assert report.summary() == "24 s in all (render 7, denoise 0, codec 6, fit 0, other 11)"


def test_phase_timer_charges_a_phase_that_raises_and_resumes_its_caller() -> None:
    clock = FakeClock()
    timer = PhaseTimer(torch.device("cpu"), clock=clock)

    def failing() -> None:
        clock.advance(4.0)
        raise ValueError("boom")

    def outer_body() -> None:
        with pytest.raises(ValueError):
            timer.wrap("codec", failing)()
        clock.advance(1.0)

    timer.wrap("fit", outer_body)()
    assert timer.report().seconds == {"render": 0.0, "denoise": 0.0, "codec": 4.0, "fit": 1.0}


@pytest.mark.skipif(PeakMemory(torch.device("cpu")).peak_bytes() is None, reason="no resettable peak RSS here")
def test_peak_memory_is_charged_to_the_phase_that_allocated_it() -> None:
    """A phase that briefly holds 400 MB peaks 400 MB above one that holds nothing, and the run's peak covers it."""
    size = 400 * 2**20

    def hold() -> None:
        block = np.ones(size, dtype=np.uint8)
        del block

    timer = PhaseTimer(torch.device("cpu"))
    timer.wrap("fit", lambda: None)()
    timer.wrap("denoise", hold)()
    timer.wrap("render", lambda: None)()
    report = timer.report()
    peaks = {phase: report.peak_gib[phase] * 2**30 for phase in ("fit", "denoise", "render")}
    assert peaks["denoise"] - peaks["fit"] >= 0.9 * size
    assert peaks["denoise"] - peaks["render"] >= 0.9 * size  # the high-water mark was reset after the big phase
    assert report.peak_gib["codec"] is None  # never ran
    assert report.total_peak_gib * 2**30 >= peaks["denoise"]
    assert report.memory == "process resident"


def test_timed_proxy_charges_only_the_named_methods() -> None:
    class Model:
        scale = 3

        def predict(self, x: int) -> int:
            return x * self.scale

        def describe(self) -> str:
            return "model"

    clock = FakeClock()
    timer = PhaseTimer(torch.device("cpu"), clock=clock)
    model = Timed(Model(), timer, {"predict": "denoise"})
    assert (model.predict(2), model.describe(), model.scale) == (6, "model", 3)
    assert timer.report().calls == dict.fromkeys(PHASES, 0) | {"denoise": 1}
