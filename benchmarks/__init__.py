"""Speed and memory of LION against softmax-attention (SDPA) baselines; run ``python -m benchmarks --help``."""
