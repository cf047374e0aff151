"""Evaluation only (benchmarks and tests): accuracy metrics and a LoG + watershed baseline.

Nothing in the segmentation pipeline imports this subpackage.
"""
