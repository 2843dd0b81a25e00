"""Pre-activation ResNets (He et al., Identity Mappings in Deep Residual Networks, 2016) in JAX/Flax.

Import what you need from the submodules (`networks`, `units`, `train`, ...); this package
root stays free of heavy imports so `summary` and `benchmark` never pull in TensorFlow.
"""

__version__ = "0.1.0"
