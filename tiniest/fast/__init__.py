"""Fast inference: ``optimize`` gives a Tiniest with the same predictions, faster on CPU.

* ``optimized``: the folded NHWC rewrite (``FastTiniest``) and ``optimize``;
* ``compiled``: its AOTInductor package, built once per machine, checked in a child
  process (``_package_check``) and cached;
* ``allocator``: the C allocator setting the command line uses.
"""

from tiniest.fast.optimized import (
    FastTiniest,
    OptimizedTiniest,
    OptimizeMode,
    compiler_available,
    optimize,
    worth_building,
)

__all__ = ["FastTiniest", "OptimizeMode", "OptimizedTiniest", "compiler_available", "optimize", "worth_building"]
