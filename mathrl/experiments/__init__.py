"""Experiments: an experiment file read into stages (schema), run in order with resume (runner), and
priced against a time budget before it starts (budget, budget_pricing, budget_shapes)."""
