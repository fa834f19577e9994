"""The synchronised sampler: N diffusion processes, one per view, kept consistent through a canonical space.

Notation (the paper's; docs/conventions.md): the canonical variable `z`, the instances `x` stacked over views,
the projection `f = bridge.project` and the aggregation `g = bridge.unproject`, Tweedie `phi(x_t, eps) -> x0_hat`
and one reverse step `psi(x_t, x0_hat) -> x_prev` (DDIM or DDPM, `sync_splat.functional.diffusion`).

The paper's cases differ only in *what* is aggregated through g (then re-projected by f) and *where* the state
lives, so a case is data (`SyncConfig.aggregate`, `SyncConfig.state_space`) and the step is written once:

| case | state_space | aggregate | one synchronised step |
|---|---|---|---|
| 0 | instance | none | every view steps on its own |
| 1 | instance | eps | eps_i <- f_i(g(eps)); x_i <- psi(x_i, phi(x_i, eps_i)) |
| 2 (SyncTweedies) | instance | x0 | x0_i <- f_i(g(x0_hat)); x_i <- psi(x_i, x0_i) |
| 3 | instance | x_prev | x_i <- f_i(g(psi(x, x0_hat))) (MultiDiffusion) |
| 4 | canonical | eps | z <- psi(z, phi(z, g(eps_hat of f(z)))) |
| 5 | canonical | x0 | z <- psi(z, g(x0_hat of f(z))) (SyncMVD) |

Instance pixels the canonical space does not cover keep their own value: f is always called with the instances'
own tensor as background. Synchronisation runs while `t > (1 - sync_until) * T`; afterwards every view steps on its
own (a canonical state is first projected into the views). State is explicit: `init` returns a `SamplerState` and
`step` returns the next one, so a trainer can run one step per iteration and checkpoint the state in between.

Views split across processes (`sync_splat.distributed`): a bridge with a `shard` holds some of the views, and so do
the states' view stacks; z is whole on every process. Noise per view is drawn for every view of the rig and cut to
the process's own, so every process's generator stays in step and the run draws what one process would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

import torch
from torch import Tensor

from sync_splat.bridges.base import Bridge
from sync_splat.denoisers.base import Denoiser
from sync_splat.distributed import ViewShard
from sync_splat.errors import InputError
from sync_splat.functional.diffusion import NoiseSchedule, TimestepSpacing, ddim_step, ddpm_step, tweedie

Aggregate = Literal["none", "eps", "x0", "x_prev"]
StateSpace = Literal["instance", "canonical"]
StepSpacing = Literal[TimestepSpacing, "model"]
"""How the steps' timesteps are spread: a schedule's spacing rule, or "model" for the denoiser's own."""


@dataclass(frozen=True)
class SyncConfig:
    """How the views are synchronised and how each process is stepped. The default is SyncTweedies (case 2)."""

    aggregate: Aggregate = "x0"
    """What is averaged through the canonical space: nothing, the noise predictions, the Tweedie estimates, or the
    next states."""
    state_space: StateSpace = "instance"
    """Where the diffusion state lives while synchronised: one sample per view, or one canonical sample."""
    num_steps: int = 30
    """Number of denoising steps."""
    timestep_spacing: StepSpacing = "karras"
    """Which train timesteps the steps visit: "karras" (Karras et al. 2022, rho = 7: t = 999, 976, ..., 3, 1 for 30
    steps) starts on the last one, where the starting noise x_T ~ N(0, I) is closest to what the model saw in
    training, and crowds the steps at low noise, where one coarse step loses the finest detail; "trailing" (t = 999,
    966, ..., 32), "leading" and "linspace" are diffusers' even spacings; "model" follows the denoiser's own
    configuration (Stable Diffusion 1.5's is "leading" with offset 1: t = 958, 925, ..., 1, never the noisiest
    timestep). What each costs in fidelity is measured in docs/fidelity.md."""
    sync_until: float = 0.8
    """Fraction of the schedule that is synchronised: steps with t > (1 - sync_until) * T (the paper's mvd_end)."""
    method: Literal["ddim", "ddpm"] = "ddim"
    """The reverse step: deterministic DDIM (with eta) or ancestral DDPM."""
    eta: float = 0.0
    """DDIM stochasticity (0 is deterministic); the noise is scaled correctly, unlike the official code."""
    consistent_noise: bool = True
    """Instance cases: start every view from f(z_T), so overlaps start equal, instead of i.i.d. noise per view."""
    final_aggregation: bool = True
    """Instance cases: end with one more aggregation f(g(x_0)), as the paper's applications do."""

    def schedule(self, denoiser: Denoiser) -> NoiseSchedule:
        """The denoiser's noise schedule with this config's timestep spacing."""
        model = denoiser.schedule
        if self.timestep_spacing in ("model", model.timestep_spacing):
            return model
        offset = model.steps_offset if self.timestep_spacing == "leading" else 0
        return replace(model, timestep_spacing=self.timestep_spacing, steps_offset=offset)

    @classmethod
    def case(cls, number: int) -> SyncConfig:
        """The paper's case `number` (0 = no synchronisation, 2 = SyncTweedies) with default settings."""
        if number not in PAPER_CASES:
            raise InputError(f"case {number} does not exist: the paper's cases are 0 to 5 (2 is SyncTweedies)")
        aggregate, state_space = PAPER_CASES[number]
        return cls(aggregate=aggregate, state_space=state_space)

    @property
    def case_number(self) -> int | None:
        """The paper's number for this (aggregate, state_space) pair."""
        return next((n for n, pair in PAPER_CASES.items() if pair == (self.aggregate, self.state_space)), None)

    def check(self) -> None:
        """Raise `InputError` for settings that name no case or cannot run."""
        if self.case_number is None:
            raise InputError(
                f"aggregate={self.aggregate!r} with state_space={self.state_space!r} is not one of the paper's cases: "
                "a canonical state aggregates 'eps' or 'x0'"
            )
        if not 0.0 <= self.sync_until <= 1.0:
            raise InputError(f"sync_until must be in [0, 1], got {self.sync_until}")
        if self.num_steps < 1:
            raise InputError(f"num_steps must be at least 1, got {self.num_steps}")
        if self.eta < 0.0:
            raise InputError(f"eta must be non-negative, got {self.eta}")
        if self.timestep_spacing not in get_args(StepSpacing):
            raise InputError(
                f"timestep_spacing must be one of {list(get_args(StepSpacing))}, got {self.timestep_spacing!r}"
            )


PAPER_CASES: dict[int, tuple[Aggregate, StateSpace]] = {
    0: ("none", "instance"),
    1: ("eps", "instance"),
    2: ("x0", "instance"),
    3: ("x_prev", "instance"),
    4: ("eps", "canonical"),
    5: ("x0", "canonical"),
}

SYNC_TWEEDIES = SyncConfig()
"""The paper's recommended case 2: average the Tweedie estimates, keep one state per view."""


@dataclass(frozen=True)
class SamplerState:
    """Everything a run needs to continue: tensors and counters only, so it can be checkpointed.

    Attributes:
        step_index: how many steps have been taken (0 after `init`).
        x_t: [N, C, h, w] instance samples; in canonical cases, the views' own samples where z does not reach.
        z_t: the canonical sample while a canonical case is synchronised, else None.
        z0_hat: the canonical Tweedie estimate g(x0_hat) of the latest step that computed one (every synchronised
            step of the x0 cases, and every step a preview was asked for): the live preview and the fit's warm start.
        x0_hat: [N, C, h, w] the latest instance Tweedie estimates, after synchronisation.
        rng_state: the generator's state, so a resumed run draws the same noise as an uninterrupted one.
    """

    step_index: int
    x_t: Tensor
    z_t: Tensor | None
    z0_hat: Tensor | None
    x0_hat: Tensor | None
    rng_state: Tensor

    def to_dict(self) -> dict[str, object]:
        """A plain dict for `torch.save` (checkpoints)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> SamplerState:
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def gathered(self, shard: ViewShard | None) -> SamplerState:
        """This state with its view stacks (`x_t`, `x0_hat`) over every view of the rig, on every process, from each
        process's own views (a collective where `shard` is split across processes; the state itself otherwise): what a
        checkpoint holds, whatever the process count."""
        if shard is None or not shard.sharded:
            return self
        return replace(self, **{name: _views(getattr(self, name), shard.gather) for name in _VIEW_STACKS})

    def held(self, shard: ViewShard | None) -> SamplerState:
        """This state, whose view stacks hold every view of the rig (a checkpoint's), cut to the views `shard` holds."""
        if shard is None or not shard.sharded:
            return self
        return replace(self, **{name: _views(getattr(self, name), shard.local) for name in _VIEW_STACKS})


_VIEW_STACKS = ("x_t", "x0_hat")
"""The fields of `SamplerState` stacked over views (the others are canonical, or counters)."""


def _views(stack: Tensor | None, change: Callable[[Tensor], Tensor]) -> Tensor | None:
    return None if stack is None else change(stack)


@dataclass(frozen=True)
class SamplerResult:
    """The end of a run: the canonical answer and the views it renders to."""

    z: Tensor
    x: Tensor
    instances: Tensor
    """The views the instance processes ended with, before the last fit: what the fit had to explain (for the cases
    whose state is canonical, the renders of z)."""


class SyncSampler:
    """Runs the synchronised reverse process of one denoiser over one bridge.

    Args:
        denoiser: the diffusion model (`sync_splat.denoisers.Denoiser`).
        bridge: the geometry between canonical and instance spaces (`sync_splat.bridges.Bridge`).
        config: the case and step settings; SyncTweedies by default.
    """

    def __init__(self, denoiser: Denoiser, bridge: Bridge, config: SyncConfig = SYNC_TWEEDIES) -> None:
        config.check()
        if not bridge.linear and (config.aggregate in ("eps", "x_prev") or config.state_space == "canonical"):
            raise InputError(
                f"case {config.case_number} cannot run on this bridge: its canonical space (e.g. RGB splat colours) is "
                "not the denoiser's space, so noise and noisy samples cannot live or be averaged there; use case 2, "
                "or a canonical space in the denoiser's space (for splats: --fit.canonical latent)"
            )
        self.denoiser = denoiser
        self.bridge = bridge
        self.config = config
        self.shard: ViewShard | None = getattr(bridge, "shard", None)
        self.schedule = config.schedule(denoiser)
        self.timesteps: list[int] = self.schedule.timesteps(config.num_steps).tolist()
        self.conditions = bridge.conditions()

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def is_synchronised(self, t: int) -> bool:
        """Whether the step at train timestep t aggregates through the canonical space."""
        if self.config.aggregate == "none":
            return False
        return t > (1.0 - self.config.sync_until) * self.schedule.num_train_timesteps

    def init(self, generator: torch.Generator) -> SamplerState:
        """Draw the initial noise: the bridge's view-consistent noise, or i.i.d. noise per view.

        The generator must live on the CPU: the sampler draws every value there, so a seed gives the same run on
        any device, and its state goes into checkpoints."""
        if generator.device.type != "cpu":
            raise InputError(
                f"the sampler's generator is on {generator.device}: pass a CPU torch.Generator (values are drawn on "
                "the CPU and moved, so a seed gives the same run on every device)"
            )
        z_T, x_T = self.bridge.initial_noise(generator)
        canonical = self.config.state_space == "canonical"
        if not (canonical or self.config.consistent_noise):
            x_T = _randn_like(x_T, generator, self.shard)
        return SamplerState(
            step_index=0,
            x_t=x_T,
            z_t=z_T if canonical and self.is_synchronised(self.timesteps[0]) else None,
            z0_hat=None,
            x0_hat=None,
            rng_state=generator.get_state(),
        )

    def step(self, state: SamplerState, preview: bool = False) -> SamplerState:
        """Take one reverse step from `state`; returns the next state (the input is not modified).

        g runs once where the step synchronises, and not at all where it does not, unless `preview` asks for the
        canonical Tweedie estimate `z0_hat` of this step (a live viewer); in cases 1 and 3 the preview is a second g.
        """
        if state.step_index >= self.num_steps:
            raise ValueError(f"the run is complete: all {self.num_steps} steps were taken")
        generator = torch.Generator().set_state(state.rng_state)
        schedule = self.schedule
        t = self.timesteps[state.step_index]
        t_prev = schedule.previous_timestep(t, self.num_steps, self.config.method)
        alpha_bar = schedule.alpha_bar(t)
        alpha_bar_prev = schedule.alpha_bar(t_prev, final=1.0 if self.config.method == "ddpm" else None)

        def reverse(x_t: Tensor, x0_hat: Tensor, views: ViewShard | None = self.shard) -> Tensor:
            if self.config.method == "ddpm":
                noise = _randn_like(x_t, generator, views) if alpha_bar_prev < 1.0 else None
                return ddpm_step(x_t, x0_hat, alpha_bar, alpha_bar_prev, noise)
            noise = _randn_like(x_t, generator, views) if self.config.eta > 0.0 else None
            return ddim_step(x_t, x0_hat, alpha_bar, alpha_bar_prev, self.config.eta, noise)

        f, g = self.bridge.project, self.bridge.unproject
        synchronised = self.is_synchronised(t)
        z_t, x_t = state.z_t, state.x_t
        if z_t is not None and not synchronised:
            # The canonical window has ended: from here on every view continues on its own.
            x_t, z_t = f(z_t, background=x_t), None
        if z_t is not None:
            x_t = f(z_t, background=x_t)

        eps_hat = self.denoiser.predict_eps(x_t, t, self.conditions)
        x0_hat = tweedie(x_t, eps_hat, alpha_bar)
        aggregate = self.config.aggregate if synchronised else "none"
        z_prev = None

        if z_t is not None:
            if aggregate == "eps":
                z0_hat = tweedie(z_t, g(eps_hat), alpha_bar)
            else:
                z0_hat = g(x0_hat, previous=state.z0_hat)
            z_prev = reverse(z_t, z0_hat, views=None)  # z is whole on every process
            # Uncovered pixels go on with their own process; covered ones are re-rendered from z next step.
            x_prev = reverse(x_t, x0_hat)
            x0_hat = f(z0_hat, background=x0_hat)
        elif aggregate == "x0":
            z0_hat = g(x0_hat, previous=state.z0_hat)
            x0_hat = f(z0_hat, background=x0_hat)
            x_prev = reverse(x_t, x0_hat)
        else:
            if aggregate == "eps":
                x0_hat = tweedie(x_t, f(g(eps_hat), background=eps_hat), alpha_bar)
            x_prev = reverse(x_t, x0_hat)
            if aggregate == "x_prev":
                x_prev = f(g(x_prev), background=x_prev)
            z0_hat = g(x0_hat, previous=state.z0_hat) if preview else state.z0_hat

        return SamplerState(
            step_index=state.step_index + 1,
            x_t=x_prev,
            z_t=z_prev,
            z0_hat=z0_hat,
            x0_hat=x0_hat,
            rng_state=generator.get_state(),
        )

    def finish(self, state: SamplerState) -> SamplerResult:
        """The canonical answer of a completed run and its views (one last f(g(x_0)) where configured)."""
        if state.step_index != self.num_steps:
            raise ValueError(f"the run is not complete: {state.step_index} of {self.num_steps} steps taken")
        if state.z_t is not None:
            x = self.bridge.project(state.z_t, background=state.x_t)
            return SamplerResult(z=state.z_t, x=x, instances=x)
        z = self.bridge.unproject(state.x_t, previous=state.z0_hat)
        x = self.bridge.project(z, background=state.x_t) if self.config.final_aggregation else state.x_t
        return SamplerResult(z=z, x=x, instances=state.x_t)

    def sample(
        self, generator: torch.Generator, callback: Callable[[SamplerState], None] | None = None
    ) -> SamplerResult:
        """Run every step from fresh noise; `callback` sees each new state (progress bars, live previews)."""
        state = self.init(generator)
        while state.step_index < self.num_steps:
            state = self.step(state)
            if callback is not None:
                callback(state)
        return self.finish(state)


def _randn_like(x: Tensor, generator: torch.Generator, views: ViewShard | None = None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the CPU generator so runs are reproducible on any device; for a
    stack of `views` split across processes, drawn for every view and cut to this process's."""
    if views is None or not views.sharded:
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    every_view = torch.randn((views.total, *x.shape[1:]), generator=generator, dtype=torch.float32)
    return views.local(every_view).to(device=x.device, dtype=x.dtype)
