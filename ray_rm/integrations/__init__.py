"""Adapters that plug a ray_rm reward server into RL trainers without changing the trainer.

* ``trl``   ``RayRMReward`` / ``AsyncRayRMReward``: reward functions for TRL's ``GRPOTrainer(reward_funcs=[...])``
* ``verl``  ``compute_score`` (+ async and batched variants) for verl's ``custom_reward_function``

Each adapter only turns the trainer's call into ``RewardClient`` items; scoring, batching, retries and
transport (handle in the cluster, HTTP outside) are the client's. They never import the trainers, so
ray_rm does not depend on them. verl's vLLM path needs no adapter: the server speaks ``/classify``.
"""
