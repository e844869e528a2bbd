"""torch.hub entry points of the Tiniest CIFAR-10 classifier; the code lives in ``tiniest/``."""

import os as _os
import sys as _sys


def _refuse_another_tiniest() -> None:
    """torch.hub must run this folder's code: a ``tiniest`` imported earlier from elsewhere would shadow it."""
    here = _os.path.dirname(_os.path.realpath(__file__))
    imported = _sys.modules.get("tiniest")
    origin = getattr(imported, "__file__", None) if imported is not None else None
    if imported is None or (origin and _os.path.dirname(_os.path.dirname(_os.path.realpath(origin))) == here):
        return
    raise ImportError(
        f"torch.hub.load({here!r}) would run the tiniest package this process already imported from "
        f"{_os.path.dirname(origin or '?')!r} instead of {_os.path.join(here, 'tiniest')!r}: call torch.hub.load "
        "before `import tiniest` (or in a fresh process), or use that copy directly: tiniest.tiniest()"
    )


_refuse_another_tiniest()

from tiniest.hub import tiniest  # noqa: E402  (after the check: this folder's package, never another)

dependencies = ["torch"]

__all__ = ["tiniest"]
