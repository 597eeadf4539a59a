"""Metrics: one implementation of each statistic (AUC and its CIs, thresholds, Brier score,
calibration, Dice/IoU and surface distances, regression errors, multiclass AUCs, paired
tests), below the tasks in the layers so that tasks, evaluation, baselines and losses all
import the same code. Depends only on numpy, scipy and scikit-learn."""
