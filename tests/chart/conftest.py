"""The chart tests' helm fixtures (tests/chart/render.py)."""

from tests.chart.render import helm, helm3, helm4

__all__ = ["helm", "helm3", "helm4"]
