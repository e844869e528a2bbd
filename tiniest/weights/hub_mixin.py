"""``from_pretrained`` / ``save_pretrained`` for a model class, in the manner of huggingface_hub's ``ModelHubMixin``.

The mixin knows no model class: ``from_pretrained`` builds whichever class it is called on
(``cls(num_classes, labels=..., meta=...)``) and ``save_pretrained`` writes the instance's
weights, ``labels`` and ``meta``. The folder code (``tiniest.weights.hub_folder``) is imported
only when called, so that a model class costs nothing more to import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

__all__ = ["HubFolderMixin"]


class HubFolderMixin(nn.Module):
    """A torch module with class names (``labels``) and file metadata (``meta``), kept in Hub folders."""

    if TYPE_CHECKING:  # set by the model's __init__; hidden from torch.jit.script, which cannot type them
        labels: tuple[str, ...]
        meta: dict[str, Any]

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_folder: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        device: str | torch.device | None = None,
    ) -> Self:
        """Verified weights from a Hub repo id (``owner/name``) or a local folder, in eval mode.

        ``revision``, ``cache_dir``, ``token``, ``local_files_only`` and ``force_download`` are
        ``huggingface_hub.hf_hub_download``'s, for a repo id (only ``model.safetensors`` and
        ``config.json`` are fetched, each refused unfetched when the Hub announces more than
        ``TINIEST_MAX_DOWNLOAD_MB``); ``device``: where to put the model. See ``tiniest.weights.hub_folder``.
        """
        from tiniest.weights.hub_folder import from_pretrained

        return from_pretrained(
            cls,
            repo_id_or_folder,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            device=device,
        )

    def save_pretrained(self, folder: str | os.PathLike[str], *, repo_id: str | None = None) -> Path:
        """Write a Hub model folder: model.safetensors, config.json, README.md (whose card names ``repo_id``)."""
        from tiniest.weights.hub_folder import save_pretrained

        return save_pretrained(self.state_dict(), folder, labels=self.labels, meta=self.meta, repo_id=repo_id)
