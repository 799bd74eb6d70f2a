"""jaxseg: semi-supervised medical image segmentation with contrastive learning, in JAX."""

__version__ = '0.1.0'
