"""How long a first load takes to fail, with default settings, when every source connects and never answers.

A loopback socket that listens and never accepts stands for a firewall or a dead proxy: the GitHub
asset, the Hugging Face Hub and the original checkpoint all point at it, the caches are empty, and
no ``TINIEST_*`` knob is set. Prints the wall time of ``python -c "import tiniest; tiniest.tiniest()"``
(interpreter start and ``import torch`` included) and the lines the user saw meanwhile.

    .venv/bin/python benchmarks/bench_silent_network.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

WATCHED = ("Downloading", "weights source", "tiniest.errors.WeightsNotFoundError")


def main() -> None:
    with socket.socket() as listener, tempfile.TemporaryDirectory() as home:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        env = {name: value for name, value in os.environ.items() if not name.startswith(("TINIEST_", "HF_"))}
        env |= {
            "HF_ENDPOINT": url,
            "TINIEST_GITHUB_URL": url,
            "HF_HOME": f"{home}/hf",
            "TORCH_HOME": f"{home}/torch",
            "TINIEST_WEIGHTS_DIR": f"{home}/weights",
        }
        start = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-c", "import tiniest; tiniest.tiniest()"], env=env, capture_output=True, text=True
        )
        elapsed = time.monotonic() - start
    print(f"exit status {run.returncode} after {elapsed:.1f} s; what the user saw:")
    print("\n".join(line for line in run.stderr.splitlines() if line.startswith(WATCHED)))


if __name__ == "__main__":
    main()
