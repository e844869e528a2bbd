"""Keep ``tiniest.optimize(...)`` and ``tiniest.predict(...)`` callable after their modules are imported.

Both functions live in modules of the same name. Importing such a module (``import tiniest.predict``,
or the CLI building its parser) makes the module the package's attribute in place of the function,
so a notebook's second ``tiniest.predict(x)`` would raise "module is not callable". Making the
module itself callable keeps every spelling working.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["make_module_callable"]


def make_module_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Calling the module ``module_name`` calls ``function`` with the same arguments."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
