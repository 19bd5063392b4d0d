"""geovl: Qwen-VL models as Earth-observation experts — data, training, evaluation and serving."""

__version__ = "0.1.0"
