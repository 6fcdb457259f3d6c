"""The reward model: build, packed-row batches, attention backends, heads, sequence parallelism and export.

It must not import Ray (workers, servers and tools all build models the same way).
"""
