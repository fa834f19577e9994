"""The case study runs end to end on a tiny budget and reports what it claims to measure."""

import math
import re
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.functional.diffusion import NoiseSchedule
from sync_splat.sampler import SyncConfig
from sync_splat.studies.ambiguous_image import AmbiguousImageBridge
from sync_splat.studies.case_study import (
    CHANNELS,
    PROJECTIONS,
    CaseStudy,
    Projection,
    band_powers,
    delivered_components,
)


def test_band_powers_of_prior_samples_are_one() -> None:
    prior = GaussianTexturePrior.from_prompt("clouds")
    samples = prior.sample(400, 16, 16, torch.Generator().manual_seed(0))
    low, high = band_powers(samples, prior.power_spectrum(16, 16))
    assert abs(low - 1) < 0.1 and abs(high - 1) < 0.1


def test_blur_lowers_the_high_band() -> None:
    prior = GaussianTexturePrior.from_prompt("clouds")
    samples = prior.sample(64, 16, 16, torch.Generator().manual_seed(0))
    blurred = (samples + samples.roll(1, -1) + samples.roll(1, -2) + samples.roll((1, 1), (-2, -1))) / 4
    sharp = band_powers(samples, prior.power_spectrum(16, 16))
    soft = band_powers(blurred, prior.power_spectrum(16, 16))
    assert soft[1] < 0.8 * sharp[1]


def chi_square_p_value(counts: Tensor, weights: Tensor) -> float:
    """The p-value of Pearson's chi-square test of counts over three categories against their weights (2 degrees of
    freedom, where the survival function is exp(-chi2 / 2))."""
    assert counts.numel() == weights.numel() == 3
    expected = weights * counts.sum()
    return math.exp(-0.5 * float(((counts - expected).square() / expected).sum()))


def test_independent_ddim_samples_reproduce_the_mixture_weights_only_with_the_noise_aware_classifier() -> None:
    """Case 0 with one view per seed gives independent DDIM samples, whose components must come out with the prior's
    weights. The clean-image likelihood, blind to the noise DDIM's last step leaves, never picks camouflage's desert
    component and fails the same test."""
    prior = GaussianTexturePrior.from_prompt("camouflage", max_batch=1024)
    one_view = Projection("one view", "1-to-1", lambda s: AmbiguousImageBridge(CHANNELS, s, ("identity",)))
    measured = CaseStudy(seeds=300, num_steps=20, size=8).measure(prior, one_view, SyncConfig.case(0))
    counts = torch.tensor(measured.components, dtype=torch.float64)
    assert chi_square_p_value(counts, prior.weights) > 1e-3
    clean = torch.bincount(prior.component_log_likelihood(measured.views).argmax(dim=1), minlength=3)
    assert chi_square_p_value(clean.double(), prior.weights) < 1e-6


def test_the_component_classifier_refuses_a_schedule_that_ends_on_clean_images() -> None:
    prior = GaussianTexturePrior.from_prompt("camouflage", schedule=NoiseSchedule.linear())
    with pytest.raises(ValueError, match="alpha_bar"):
        delivered_components(prior, prior.sample(2, 8, 8))


def test_inconsistency_is_zero_for_synchronised_crops_and_positive_without_sync() -> None:
    study = CaseStudy(seeds=2, num_steps=10, size=8)
    prior = GaussianTexturePrior.from_prompt("clouds")
    crops = PROJECTIONS[1]
    synced = study.measure(prior, crops, SyncConfig(num_steps=10, sync_until=1.0))
    independent = study.measure(prior, crops, replace(SyncConfig.case(0), num_steps=10, consistent_noise=False))
    assert synced.inconsistency < 0.05 < independent.inconsistency


def test_the_study_writes_tables_grids_and_a_result_line(tmp_path, capsys) -> None:
    study = CaseStudy(seeds=2, num_steps=6, size=8, sync_until=0.5, projections=(PROJECTIONS[0], PROJECTIONS[4]))
    summary = study.run(tmp_path / "study")
    report = (tmp_path / "study" / "case_study.md").read_text()
    assert "synchronised while t > 500 of 1000" in report
    assert report.count("| type | case 0 | case 1 | case 2 | case 3 | case 4 | case 5 |") == 4
    assert "most likely component" in report
    assert len(list((tmp_path / "study").glob("*.png"))) == 2 * 2 * 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(
        r"RESULT case2_worst_rel_fidelity=([\d.]+) case2_max_inconsistency=([\d.]+) seconds=([\d.]+)", last
    )
    assert match is not None
    assert float(match.group(1)) == round(summary["case2_worst_rel_fidelity"], 4)
