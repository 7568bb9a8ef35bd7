"""Detectors (scikit-learn outlier contract) and forecasters (statsforecast contract)."""
