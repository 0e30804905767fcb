"""Gymnasium environments of searchprune.

``searchprune/LayerPruning-v0`` is AMC's layer-by-layer pruning environment
(:class:`envs.layer_pruning.LayerPruningEnv`)::

    import gymnasium, envs
    env = gymnasium.make("searchprune/LayerPruning-v0", source={
        "task": "digits-cnn", "budget": {"flops": 0.5}, "searcher": "amc",
        "space": {"granularity": "channel"}})
"""

import gymnasium

from envs.layer_pruning import LayerPruningEnv

ENV_ID = "searchprune/LayerPruning-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.layer_pruning:LayerPruningEnv")

__all__ = ["ENV_ID", "LayerPruningEnv"]
