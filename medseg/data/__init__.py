"""Datasets: finding cases in each layout, checking them, splitting, caching, and the synthetic demo set."""
