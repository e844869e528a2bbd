"""torch.hub entry points of the Tiniest CIFAR-10 classifier; the code lives in ``tiniest/``."""

from tiniest.hub import tiniest

dependencies = ["torch"]

__all__ = ["tiniest"]
