"""Fast inference: :func:`optimize` gives a Tiniest with the same predictions, faster on CPU.

* :mod:`~tiniest.fast.optimized`: the folded NHWC rewrite (:class:`FastTiniest`) and :func:`optimize`;
* :mod:`~tiniest.fast.compiled`: its AOTInductor package, built once per machine, checked in a child
  process (:mod:`~tiniest.fast._package_check`) and cached;
* :mod:`~tiniest.fast.allocator`: the C allocator setting the command line uses.
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
