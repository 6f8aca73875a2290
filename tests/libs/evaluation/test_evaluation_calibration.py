"""Judge calibration math on fixed labels with hand-computed answers, the trust decision,
and anchor sets."""

from __future__ import annotations

import json
import math

import pytest

from posttrain.evaluation import (
    AnchorItem,
    CalibrationPolicy,
    RuleJudge,
    anchor_set_version,
    calibrate,
    calibrate_judge,
    cohen_kappa,
    dump_anchors,
    load_anchors,
    pearson,
    spearman,
)
from posttrain.evaluation.calibration import (
    AnchorSetError,
    Calibration,
    average_ranks,
    exact_agreement,
)


def from_confusion(table: dict[tuple[int, int], int]) -> tuple[list[int], list[int]]:
    a, b = [], []
    for (x, y), n in table.items():
        a += [x] * n
        b += [y] * n
    return a, b


def test_kappa_of_a_known_confusion_matrix() -> None:
    # 50 items: both yes 20, a yes / b no 5, a no / b yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_a(yes) = 0.5, p_b(yes) = 0.6; p_e = 0.5*0.6 + 0.5*0.4 = 0.5;
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a, b = from_confusion({(1, 1): 20, (1, 0): 5, (0, 1): 10, (0, 0): 15})
    assert exact_agreement(a, b) == pytest.approx(0.7)
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    # two categories one apart: quadratic weights are 0/1, so weighted == unweighted
    assert cohen_kappa(a, b, weights="quadratic") == pytest.approx(0.4)


def test_quadratic_weighted_kappa_by_hand() -> None:
    # a = [1,2,3], b = [1,3,3]; w = (i-j)^2. Observed weighted disagreement: (2,3) -> 1/3 * 1.
    # Expected: sum_ij w_ij p_a(i) p_b(j) with p_a = 1/3 each, p_b(1) = 1/3, p_b(3) = 2/3:
    # 1/3*2/3*4 + 1/3*1/3*1 + 1/3*2/3*1 + 1/3*1/3*4 = 8/9 + 1/9 + 2/9 + 4/9 = 15/9.
    # kappa_w = 1 - (1/3) / (15/9) = 1 - 0.2 = 0.8
    assert cohen_kappa([1, 2, 3], [1, 3, 3], weights="quadratic") == pytest.approx(0.8)
    # unweighted: p_o = 2/3, p_e = 1/3*1/3 + 1/3*0 + 1/3*2/3 = 1/3 -> (2/3 - 1/3) / (2/3) = 0.5
    assert cohen_kappa([1, 2, 3], [1, 3, 3]) == pytest.approx(0.5)


def test_kappa_perfect_and_undefined() -> None:
    assert cohen_kappa([1, 2, 3, 3], [1, 2, 3, 3]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa([4, 4, 4], [4, 4, 4]))  # one category: p_e = 1


def test_spearman_with_ties_by_hand() -> None:
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; centred dx = [-1.5, 0, 0, 1.5],
    # dy = [-1.5, .5, -.5, 1.5]; cov 4.5, var 4.5 and 5 -> rho = 4.5 / sqrt(22.5) = sqrt(0.9)
    assert list(average_ranks([1, 2, 2, 3])) == [1, 2.5, 2.5, 4]
    assert list(average_ranks([3, 1, 3, 3])) == [3, 1, 3, 3]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_pearson_by_hand_and_degenerate() -> None:
    # x = [1,2,3], y = [1,2,4]: dx = [-1,0,1], dy = [-4/3,-1/3,5/3]; cov 3, var 2 and 14/3
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 14 / 3))
    assert math.isnan(pearson([2, 2, 2], [1, 2, 3]))
    with pytest.raises(ValueError):
        pearson([1, 2], [1])


def test_calibrate_trust_thresholds() -> None:
    human = [1, 2, 3, 4, 5, 5, 4, 3, 2, 1]
    good = calibrate([1, 2, 3, 4, 5, 4, 4, 3, 2, 2], human)
    assert good.trusted and good.reasons == []
    assert good.exact_agreement == pytest.approx(0.8) and good.within_one == pytest.approx(1.0)
    bad = calibrate([5, 4, 3, 2, 1, 1, 2, 3, 4, 5], human)
    assert not bad.trusted
    assert any(r.startswith("within_one agreement 0.200 < 0.8") for r in bad.reasons)
    assert any("quadratic kappa" in r for r in bad.reasons)
    few = calibrate([3, 3], [3, 3])
    assert not few.trusted and "2 anchor items < min_anchors 10" in few.reasons
    # nan never passes a threshold
    assert any("kappa nan" in r for r in few.reasons)
    strict = CalibrationPolicy(agreement="exact", min_agreement=0.9, min_kappa=None, min_anchors=1)
    assert calibrate([1, 2, 3, 4, 5, 4, 4, 3, 2, 2], human, strict).reasons == [
        "exact agreement 0.800 < 0.9"
    ]


def test_ungraded_items_count_as_disagreement() -> None:
    result = calibrate([None, 3], [3, 3], CalibrationPolicy(min_anchors=1))
    assert result.judge_scores == [0, 3]
    assert result.exact_agreement == 0.5 and result.within_one == 0.5


def test_calibration_json_round_trip_keeps_nan_as_null() -> None:
    result = calibrate([4, 4, 4], [4, 4, 4], CalibrationPolicy(min_anchors=1))
    obj = result.to_json()
    assert obj["kappa"] is None
    json.dumps(obj, allow_nan=False)
    back = Calibration.from_json(obj)
    assert math.isnan(back.kappa) and back.judge_scores == [4, 4, 4]


def test_anchor_sets_load_dump_version_and_errors() -> None:
    text = "\n".join(
        json.dumps(o)
        for o in [
            {"id": "b", "prompt": "q", "answer": "a", "human_score": 4},
            {
                "id": "a",
                "prompt": [{"role": "user", "content": "q"}],
                "answer": "a",
                "human_score": 2,
                "reference": "r",
            },
        ]
    )
    items = load_anchors(text)
    assert [i.id for i in items] == ["b", "a"] and items[0].prompt == [
        {"role": "user", "content": "q"}
    ]
    dumped = dump_anchors(items)
    assert dumped.splitlines()[0].startswith(b'{"answer":"a","human_score":2,"id":"a"')
    assert anchor_set_version(items) == anchor_set_version(list(reversed(items)))
    with pytest.raises(AnchorSetError) as err:
        load_anchors(
            text
            + "\n{bad\n"
            + json.dumps({"id": "a", "prompt": "q", "answer": "x", "human_score": 6})
        )
    assert {(v.row, v.field) for v in err.value.violations} == {
        (3, ""),
        (4, "id"),
        (4, "human_score"),
    }


def test_calibrate_judge_grades_every_anchor() -> None:
    ref = "hold the reset button for ten seconds"
    anchors = [
        AnchorItem(f"a{i}", [{"role": "user", "content": "reset?"}], answer, score, reference=ref)
        for i, (answer, score) in enumerate(
            [(ref, 5), ("hold the reset button", 3), ("unplug it", 1)]
        )
    ]
    result = calibrate_judge(RuleJudge(), anchors, CalibrationPolicy(min_anchors=3))
    # F1 1.0 -> 5; "hold reset button" vs 6 tokens: P 1, R 1/2 -> F1 2/3 -> 1 + round(2.67) = 4;
    # no overlap -> 1
    assert result.judge_scores == [5, 4, 1]
    assert result.judge_id == "rule:token-f1" and result.anchor_set_version == anchor_set_version(
        anchors
    )
    assert result.trusted
