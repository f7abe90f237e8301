"""Training: the epoch loop every scheduler drives, the Ray Train driver, the frozen-backbone cache."""
