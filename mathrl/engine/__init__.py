"""The engine: the one generator (generation), what to decode and where a completion ends (decoding),
loading models and tokenizers (models), and the CPU attention kernel (cpu_attention)."""
