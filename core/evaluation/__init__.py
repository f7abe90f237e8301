"""Evaluation: metrics equal to sklearn's, thresholds at precision = recall, the evaluation path, reports."""
