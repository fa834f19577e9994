"""The case study runs end to end on a tiny budget and reports what it claims to measure."""

import re
from dataclasses import replace

import torch

from sync_splat.denoisers.prior import GaussianTexturePrior
from sync_splat.sampler import SyncConfig
from sync_splat.studies.case_study import PROJECTIONS, CaseStudy, band_powers


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


def test_inconsistency_is_zero_for_synchronised_crops_and_positive_without_sync() -> None:
    study = CaseStudy(seeds=2, num_steps=10, size=8)
    prior = GaussianTexturePrior.from_prompt("clouds")
    crops = PROJECTIONS[1]
    synced = study.measure(prior, crops, SyncConfig(num_steps=10, sync_until=1.0))
    independent = study.measure(prior, crops, replace(SyncConfig.case(0), num_steps=10, consistent_noise=False))
    assert synced.inconsistency < 0.05 < independent.inconsistency


def test_the_study_writes_tables_grids_and_a_result_line(tmp_path, capsys) -> None:
    study = CaseStudy(seeds=2, num_steps=6, size=8, projections=(PROJECTIONS[0], PROJECTIONS[4]))
    summary = study.run(tmp_path / "study")
    report = (tmp_path / "study" / "case_study.md").read_text()
    assert report.count("| type | case 0 | case 1 | case 2 | case 3 | case 4 | case 5 |") == 4
    assert "most likely component" in report
    assert len(list((tmp_path / "study").glob("*.png"))) == 2 * 2 * 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(
        r"RESULT case2_worst_rel_fidelity=([\d.]+) case2_max_inconsistency=([\d.]+) seconds=([\d.]+)", last
    )
    assert match is not None
    assert float(match.group(1)) == round(summary["case2_worst_rel_fidelity"], 4)
