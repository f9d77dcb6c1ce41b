"""Decision-threshold rules on hand-made validation scores; the prior shift against its formula;
the validation loss weighted as an oversampled set; the LR finder's suggestion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hipdisloc.lr_finder import smooth, suggest
from hipdisloc.metrics import weighted_bce
from hipdisloc.stages.report.statistics import prior_shift
from hipdisloc.stages.train.fold import selection_logit
from hipdisloc.thresholds import (
    ThresholdRule,
    choose_threshold,
    logit_for_sensitivity,
    risk_of_logit,
    training_log_odds,
)

RECIPE = dict(pos_weight=25.0, train_positive_share=0.5, prevalence=0.016)


def test_val_sensitivity_is_the_highest_threshold_reaching_the_target():
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    logits = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 8.5, 2.5, -1, -2], float)
    t = choose_threshold(labels, logits, ThresholdRule("val_sensitivity", 0.9), **RECIPE)
    assert t.logit == 1.0  # 9 of 10 positives have logit >= 1; any higher threshold calls 8
    assert t.validation_sensitivity == 0.9 and t.validation_specificity == 0.5
    assert t.n_validation_images == 14 and t.n_validation_positive == 10
    assert t.score == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert logit_for_sensitivity(labels, logits, 0.95) == 0.0  # 10 of 10
    assert logit_for_sensitivity(labels, logits, 0.8) == 2.0
    # ties: a tied positive counts once it is reached
    assert logit_for_sensitivity([1, 1, 1, 0], [3.0, 3.0, 1.0, 5.0], 0.5) == 3.0
    with pytest.raises(ValueError, match="no positive"):
        choose_threshold([0, 0], [1.0, 2.0], ThresholdRule(), **RECIPE)


def test_prior_shift_threshold_is_likelihood_ratio_one():
    t = choose_threshold([0, 1], [0.0, 1.0], ThresholdRule("prior_shift"), **RECIPE)
    assert t.logit == pytest.approx(math.log(25.0))  # ln(pos_weight x 1:1 odds)
    assert t.score == pytest.approx(25 / 26)  # what an image without evidence scores
    assert t.risk == pytest.approx(0.016)  # at the threshold the risk is the prevalence
    # the formula: logit - ln(w x odds) + logit(prevalence), as the report's prior shift
    assert prior_shift([t.score], 0.5, 0.016, 25.0)[0] == pytest.approx(0.016, rel=1e-6)
    for share, w in ((0.3, 10.0), (0.5, 1.0), (0.7, 25.0)):
        z = training_log_odds(w, share)
        assert z == pytest.approx(math.log(w * share / (1 - share)))
        assert risk_of_logit(z + 2.0, w, share, 0.05) == pytest.approx(
            prior_shift([1 / (1 + math.exp(-(z + 2.0)))], share, 0.05, w)[0], rel=1e-6)
    # labels do not enter: it is the same for any validation set
    assert choose_threshold([1, 0, 0], [5.0, -3.0, 9.0], ThresholdRule("prior_shift"),
                            **RECIPE).logit == t.logit


def test_fixed_threshold_and_rule_validation():
    t = choose_threshold([0, 1], [0.2, 0.3], ThresholdRule("fixed", value=0.5), **RECIPE)
    assert t.logit == 0.0 and t.score == 0.5
    assert t.validation_sensitivity == 1.0 and t.validation_specificity == 0.0
    for bad in (dict(rule="youden"), dict(rule="fixed", value=1.0),
                dict(rule="val_sensitivity", target=0.0)):
        with pytest.raises(ValueError, match="evaluation.threshold"):
            ThresholdRule(**bad)


def test_the_threshold_depends_on_validation_arrays_only():
    """choose_threshold takes the validation arrays and the training recipe, nothing else;
    the same validation set gives the same threshold whatever else exists."""
    rng = np.random.default_rng(1)
    labels = (rng.random(300) < 0.1).astype(int)
    logits = rng.normal(size=300) + labels
    first = choose_threshold(labels, logits, ThresholdRule(), **RECIPE)
    rng.normal(size=10_000)  # other random draws (the test set's scores) change nothing
    assert choose_threshold(labels.copy(), logits.copy(), ThresholdRule(), **RECIPE) == first


def test_selection_reads_sensitivity_at_prior_shift_or_the_literal_half():
    assert selection_logit("prior_shift", 25.0) == pytest.approx(math.log(25.0))
    assert selection_logit("paper_literal", 25.0) == 0.0
    with pytest.raises(ValueError, match="sensitivity_at"):
        selection_logit("youden", 25.0)


def test_validation_loss_weighted_as_the_oversampled_set():
    labels = np.array([1, 0, 0, 0, 0, 1, 0, 0], float)
    logits = np.array([2.0, -1.0, 0.5, -2.0, 1.0, -0.5, 0.0, 3.0])
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(25.0))
    plain = float(loss(torch.tensor(logits), torch.tensor(labels)))
    assert weighted_bce(labels, logits, 25.0) == pytest.approx(plain, rel=1e-6)
    # the oversampled set: positives repeated until the classes are equal (6 + 6)
    rows = np.concatenate([np.arange(8), np.array([0, 5, 0, 5])])
    oversampled = float(loss(torch.tensor(logits[rows]), torch.tensor(labels[rows])))
    assert weighted_bce(labels, logits, 25.0, balance_classes=True) == pytest.approx(
        oversampled, rel=1e-6)


def test_lr_finder_suggests_the_steepest_descent():
    lrs = list(np.geomspace(1e-6, 1e-2, 60))
    x = np.log10(lrs)
    # a loss that falls fastest at 1e-4 and diverges after 1e-3
    losses = list(1.0 - 0.5 * np.tanh(2 * (x + 4.0)) + np.where(x > -3, (x + 3) * 5, 0))
    lr = suggest(lrs, losses)
    assert 5e-5 < lr < 2e-4
    assert suggest(lrs[:3], losses[:3]) is None
    smoothed = smooth([1.0] * 5)
    assert smoothed == pytest.approx([1.0] * 5)  # bias-corrected
