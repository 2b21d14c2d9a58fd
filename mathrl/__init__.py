"""mathrl: post-train small language models for math reasoning, and show what worked."""

__version__ = "0.1.0"
