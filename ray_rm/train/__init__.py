"""Training on Ray Train + DeepSpeed: the driver (``driver.py``) and each worker's recipe (``loop.py``).

It must not hold data preparation (``ray_rm/data``) or model code (``ray_rm/model``).
"""
