"""Where cmpnas keeps what it can rebuild: ``$CMPNAS_CACHE``, default ``~/.cache/cmpnas`` (decoded
Fashion-MNIST, image shard caches, registry downloads), each kind in a subfolder of its own."""

from __future__ import annotations

import os
from pathlib import Path


def cmpnas_cache_home() -> Path:
    return Path(os.environ.get("CMPNAS_CACHE", Path.home() / ".cache" / "cmpnas"))
