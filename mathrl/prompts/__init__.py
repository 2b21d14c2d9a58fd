"""Prompts: how a question is asked and an answer written (formats: formats, shots, protocol presets)."""
