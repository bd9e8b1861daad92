"""Quantized and pruned variants of local models: the methods, saving and reloading them,
and measuring them against their source (size, speed, fidelity)."""
