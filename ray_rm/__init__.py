"""ray_rm: train, serve, relabel and evaluate reward models on Ray (see README.md).

Importing it must stay light: it must not import Ray, torch or DeepSpeed.
"""
