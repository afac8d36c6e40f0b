"""Metrics with accumulated counts (reducible across processes): landmarks, parsing, classification."""
