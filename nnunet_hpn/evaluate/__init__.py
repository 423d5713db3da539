"""Evaluation: per-case metrics (Dice, HD95, NSD), the comparison report with paired tests, and figures."""
