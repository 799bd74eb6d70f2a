"""Published methods as loss terms of the one train step; importing this registers them."""

from jaxseg.methods import dualstream, hu, lclpl, plgcl  # noqa: F401
