"""scripts/virtual_pair_contrast.py: the share of virtual pairs that reverse or hide a lesion's contrast."""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta as beta_distribution

import virtual_pair_contrast as vpc


def test_a_lesion_dark_in_both_phases_stays_dark_and_opposite_signs_reverse_below_the_crossing() -> None:
    mixing = np.random.default_rng(1).beta(0.4, 0.4, 200_000)
    assert vpc.virtual_shares(-50.0, -45.0, mixing) == (0.0, 0.0)
    # +40 / -20 HU: the virtual arterial channel l*40 + (1-l)*(-20) is negative below l = 1/3; the two channels
    # always add up to +20 HU, so one of them keeps at least 10 HU: never faint in both
    assert vpc.virtual_shares(40.0, -20.0, mixing) == (pytest.approx(beta_distribution.cdf(1 / 3, 0.4, 0.4),
                                                                     abs=0.005), 0.0)
    # +30 / -25 HU: channels 55 l - 25 and 30 - 55 l, both within 10 HU for 20/55 < l < 35/55
    expected = beta_distribution.cdf(35 / 55, 0.4, 0.4) - beta_distribution.cdf(20 / 55, 0.4, 0.4)
    assert vpc.virtual_shares(30.0, -25.0, mixing)[1] == pytest.approx(expected, abs=0.005)
    assert np.isnan(vpc.virtual_shares(1.0, -30.0, mixing)[0])  # no arterial lesion: no sign to reverse


def test_table_has_a_row_per_lesion_kind_of_both_presets(tmp_path: Path, capsys) -> None:
    liver = {"cases": [{"preset": "liver", "lesions": [
        {"kind": "enhancing and washout", "contrast_hu": {"arterial": 40.0, "venous": -20.0}},
        {"kind": "arterial only", "contrast_hu": {"arterial": 35.0, "venous": 0.5}}]}]}
    pancreas = {"cases": [{"mass_iso_attenuating": False, "mass_subtle_in_both": False,
                           "mass_hu": {"arterial": 60.0, "venous": 50.0},
                           "parenchyma_hu": {"arterial": 110.0, "venous": 100.0}}]}
    for name, content in (("liver.json", liver), ("pancreas.json", pancreas)):
        (tmp_path / name).write_text(json.dumps(content))
    assert vpc.main([str(tmp_path / "liver.json"), str(tmp_path / "pancreas.json")]) == 0
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"liver: enhancing and washout", "liver: arterial only", "pancreas: hypo in both"}
    assert rows["liver: enhancing and washout"][4] == "100%" and rows["pancreas: hypo in both"][2] == "-50 … -50"
    assert rows["pancreas: hypo in both"][5] == "0%"
