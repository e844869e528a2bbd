"""Hugging Face model folders: what ``from_pretrained`` / ``save_pretrained`` read and write; the release's.

A folder holds ``model.safetensors`` (the deterministic release artifact), ``config.json`` and a
model card ``README.md`` whose front matter the Hub reads (licence, base model, Hub datasets, metrics),
with how to install and load it, intended uses and limitations. These
functions know no model class: ``from_pretrained`` takes it, ``save_pretrained`` takes
the weights, their labels and metadata (``tiniest.weights.hub_mixin.HubFolderMixin`` passes
them). huggingface_hub is imported only inside them: ``PyTorchModelHubMixin`` would load it with
``tiniest.model``, about four times the ~50 ms that loading the model may cost beyond torch.

Loading verifies exactly as ``tiniest.tiniest()`` does: the bytes of ``model.safetensors`` are
checked against the pinned release (the pinned Hub repo must serve exactly those bytes; any other
folder or repo loads with an ``UnverifiedWeightsWarning``), and the state_dict loads strictly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tiniest import names
from tiniest.errors import (
    ArtifactError,
    DownloadError,
    IncompatibleWeightsError,
    UnverifiedWeightsWarning,
    UsageError,
    WeightsNotFoundError,
    first_line,
)
from tiniest.files import read_regular
from tiniest.storage import HF_PREFIX, save_atomically
from tiniest.weights.artifact import artifact_metadata, to_safetensors
from tiniest.weights.fetch import max_download_bytes
from tiniest.weights.formats import sha256_hex
from tiniest.weights.loading import model_from_weights, num_outputs
from tiniest.weights.metadata import (
    UNKNOWN_LICENSE,
    M,
    check_base_model,
    check_categories,
    check_metrics,
    is_cifar10,
    weights_meta,
)
from tiniest.weights.releases import CLASSES, MAX_RECORD_BYTES, TiniestWeights
from tiniest.weights.sources import load_weights

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "from_pretrained",
    "hub_license",
    "model_card",
    "model_config",
    "save_pretrained",
    "write_model_folder",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"


def model_config(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``config.json``: the constructor's argument plus what a reader needs to use the outputs."""
    categories = list(meta["categories"])
    return {
        "architecture": "Tiniest",
        "num_classes": len(categories),
        "num_params": meta.get("num_params"),
        "id2label": {str(i): name for i, name in enumerate(categories)},
        "label2id": {name: i for i, name in enumerate(categories)},
        "preprocessing": meta.get("preprocessing"),
    }


# A licence as the Hub writes its ids: lowercase, SPDX-like (mit, apache-2.0, cc-by-nc-4.0, openrail++).
# huggingface_hub keeps no list of the ids the Hub takes (it asks the Hub, online, in ModelCard.validate,
# which push_to_hub calls), so none is kept here: an id-shaped licence goes to the card's ``license`` as
# is; any other name is ``license: other`` with ``license_name`` and ``license_link``, as the Hub asks.
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")
CARD_TEMPLATE = Path(__file__).with_name("model_card.md")  # the card's text, filled by ModelCard.from_template
README_INSTALL = 'pip install "tiniest @ git+https://github.com/{repo}"'  # the install line of the README


def hub_license(text: str) -> str | None:
    """The Hub-style id of a licence named ``text`` (``MIT`` is ``mit``), or None when it is no id but a name."""
    candidate = text.strip().lower()
    return candidate if _LICENSE_ID.fullmatch(candidate) and candidate != "other" else None


def _card_license(meta: Mapping[str, Any]) -> dict[str, str]:
    """The card's licence fields: an id as is; any other name as ``other`` with its slug and link."""
    text = str(meta.get("license") or UNKNOWN_LICENSE)
    known = hub_license(text)
    if known is not None:
        return {"license": known}
    slug = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "custom"
    fields = {"license": "other", "license_name": slug}
    link = meta.get("license_link")
    return {**fields, "license_link": str(link)} if link else fields


def _hub_dataset(meta: Mapping[str, Any]) -> str | None:
    """The Hub dataset id the metadata names (``huggingface.co/datasets/<id>``, ``hf://<id>``), else None."""
    text = str(meta.get("dataset", ""))
    for marker in ("huggingface.co/datasets/", HF_PREFIX):
        if marker in text:
            repo_id = text.split(marker, 1)[1].split()[0].split("@")[0].rstrip(",;)")
            try:
                return names.hf_repo_id(repo_id, "dataset")
            except UsageError:  # not a repo id: the card's text still says what the data were
                return None
    return None


def _split_of(label: str, values: Mapping[str, Any]) -> tuple[str, str]:
    """``(split, images)`` of a metrics entry: a subset says how many images of how many, a held-out split how made."""
    split = str(values.get("split") or (label.split() or ["?"])[-1])
    total = f"{values['total']:,}" if "total" in values else "?"
    if values.get("subset_of"):
        return split, f"{total} (random subset of {values['subset_of']:,})"
    if values.get("made_by"):
        return split, f"{total} ({names.markdown(str(values['made_by']))})"
    return split, f"{total}{' (a subset)' if 'subset_of' in values else ''}"


def _results(meta: Mapping[str, Any], dataset: str | None) -> tuple[list[Any], list[str]]:
    """The Hub's ``model-index`` results (whole splits of a Hub dataset, never a score its base may have seen) and
    the card's table rows (all)."""
    from huggingface_hub import EvalResult

    results, rows = [], []
    for label, values in (meta.get("metrics") or {}).items():
        if not isinstance(values, Mapping) or "accuracy" not in values:
            continue
        split, images = _split_of(label, values)
        if dataset is not None and "subset_of" not in values and not values.get("caveat"):
            results.append(EvalResult(
                task_type="image-classification", task_name="Image Classification",
                dataset_type=dataset, dataset_name=label.rsplit(" ", 1)[0], dataset_split=split,
                metric_type="accuracy", metric_value=float(values["accuracy"]), metric_name="Accuracy",
            ))
        rows.append(f"| {names.markdown(label)} | {names.markdown(split)} | {images} | "
                    f"{100 * float(values['accuracy']):.2f}% |")
    return results, rows


def _card_data(meta: Mapping[str, Any], name: str) -> Any:
    """The front matter the Hub reads: licence, base model, Hub datasets, tags, and results on Hub datasets."""
    from huggingface_hub import ModelCardData

    dataset = _hub_dataset(meta)
    results, rows = _results(meta, dataset)
    base = check_base_model(meta.get("base_model"), "the weights' metadata: base_model")
    license = _card_license(meta)
    return ModelCardData(
        license=license["license"],
        license_name=license.get("license_name"),
        license_link=license.get("license_link"),
        base_model=base.get("hf_repo_id") if base else None,
        library_name="pytorch",
        pipeline_tag="image-classification",
        tags=["image-classification", *(["cifar10"] if is_cifar10(meta["categories"]) else []), "tiniest",
              "safetensors"],
        datasets=[dataset] if dataset else None,
        metrics=["accuracy"] if rows else None,  # only where the body gives one
        model_name=name if results else None,
        eval_results=results or None,
    )


def _training(meta: Mapping[str, Any]) -> str:
    """Data, recipe and starting weights, each shown literally; the base model's repo id is a checked id."""
    text = names.markdown
    lines = [f"- Data: {text(str(meta.get('dataset', 'not recorded')))}",
             f"- Recipe: {text(str(meta.get('recipe', 'not recorded')))}"]
    base = check_base_model(meta.get("base_model"), "the weights' metadata: base_model")
    if base:
        repo = base.get("hf_repo_id")
        where = f" ([{repo}](https://huggingface.co/{repo}))" if repo else ""
        name, sha256 = text(str(base.get("name"))), text(str(base.get("sha256")))
        lines.append(f"- Fine-tuned from: {name}{where}, sha256 `{sha256}`, itself trained on: "
                     f"{text(str(base.get('dataset') or 'not recorded'))}")
    return "\n".join(lines)


def _caveats(meta: Mapping[str, Any]) -> list[str]:
    """A warning under the table for each score whose held-out pictures the base weights may have seen."""
    scores = (meta.get("metrics") or {}).items()
    return [f"**Caveat ({names.markdown(label)}):** {names.markdown(str(values['caveat']))}."
            for label, values in scores if isinstance(values, Mapping) and values.get("caveat")]


def _credits(meta: Mapping[str, Any]) -> str:
    """Licence, copyright and credit, a line each: a licence id is no sentence to end with a full stop (``mit.``)."""
    license_text = str(meta.get("license") or UNKNOWN_LICENSE)
    if license_text == UNKNOWN_LICENSE:
        license_text = "Licence: not stated by the weights' maker"
    elif meta.get("license_link"):
        license_text = f"Licence: {license_text} ({meta['license_link']})"
    else:
        license_text = f"Licence: {license_text}"
    parts = [license_text, *(str(meta.get(key, "")) for key in ("copyright", "credit"))]
    return "\n".join(f"- {names.markdown(part.strip().rstrip('.'))}" for part in parts if part.strip())


def model_card(meta: Mapping[str, Any], *, sha256: str, repo_id: str | None = None) -> str:
    """A model card whose YAML front matter carries licence, base model, datasets and metrics for the Hub.

    huggingface_hub's ``ModelCard`` writes it from the package's ``model_card.md`` template and a
    ``ModelCardData``. It says "verified" only for the pinned release; only whole-split scores on a
    Hub dataset go to the Hub's ``model-index`` (its dataset ``type`` is a Hub dataset id), every
    score to the card's table, with its image count. Every text the weights' metadata brings (class
    names, data, credit...) is shown literally: markdown and HTML in it are escaped (the template is
    not autoescaped); repo ids are checked ids, and metrics checked numbers, or one ``ArtifactError``.
    """
    from huggingface_hub import ModelCard

    if repo_id is not None:
        names.hf_repo_id(repo_id, "repo_id")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ArtifactError(f"model card: expected a sha256 of 64 hex digits, got {sha256[:80]!r}")
    where = "the weights' metadata"
    categories = check_categories(meta.get("categories"), where)
    check_metrics(meta.get("metrics") or {}, f"{where}: metrics", ArtifactError)
    cifar10 = is_cifar10(categories)
    name = repo_id.split("/")[-1] if repo_id else "tiniest"
    _, rows = _results(meta, None)
    header = ["| data | split | images | top-1 accuracy |", "|---|---|---|---|"]
    code_repo = TiniestWeights.DEFAULT.release.where["github"]["repo"]
    pinned = sha256 == TiniestWeights.DEFAULT.release.sha256
    num_params = meta.get("num_params", 97530)
    card = ModelCard.from_template(
        _card_data(meta, name),
        template_path=str(CARD_TEMPLATE),
        name=name,
        num_params=f"{num_params:,}" if isinstance(num_params, int) else names.markdown(str(num_params)),
        task="CIFAR-10 classifier" if cifar10 else f"{len(categories)}-class image classifier",
        install=README_INSTALL.format(repo=code_repo),
        load=f'Tiniest.from_pretrained("{repo_id or "path/to/this/folder"}")',
        check="# verified, eval mode" if pinned else (
            "# eval mode; not the pinned release: an UnverifiedWeightsWarning (none where a checkout pins it)"
        ),
        code_repo=code_repo,
        classes=", ".join(names.markdown(category) for category in categories),
        kind="small photos of CIFAR-10's ten kinds of objects" if cifar10 else "images like those it was trained on",
        num_classes=len(categories),
        results="\n\n".join(["\n".join([*header, *rows]), *_caveats(meta)]) if rows else "Not measured.",
        training=_training(meta),
        sha256=sha256,
        credits=_credits(meta),
    )
    return str(card)


def write_model_folder(folder: Path, artifact: bytes, meta: Mapping[str, Any], *, repo_id: str | None = None) -> Path:
    """The Hub folder: ``model.safetensors`` (``artifact`` as is), ``config.json``, ``README.md``."""
    config = json.dumps(model_config(meta), indent=2, sort_keys=True) + "\n"
    card = model_card(meta, sha256=sha256_hex(artifact), repo_id=repo_id)
    save_atomically(folder / WEIGHTS_NAME, artifact)
    save_atomically(folder / CONFIG_NAME, config.encode())
    save_atomically(folder / CARD_NAME, card.encode())
    return folder


def _artifact_of(
    state_dict: Mapping[str, torch.Tensor], labels: Sequence[str], meta: Mapping[str, Any]
) -> tuple[bytes, dict[str, Any]]:
    """The bytes the model was loaded from while its weights are unchanged; else new weights' metadata.

    The model's ``meta`` is repeated only if, written back, it gives the very file the weights came
    from (same tensors, same metadata); the published weights give the published bytes.
    """
    release = TiniestWeights.DEFAULT.release
    kept = dict(meta)
    loaded_sha256 = kept.pop("sha256", None)
    source_sha256 = kept.pop("source_sha256", "")
    if kept.get("categories") == list(labels) and loaded_sha256:
        artifact = to_safetensors(state_dict, artifact_metadata(kept, source_sha256=source_sha256))
        if sha256_hex(artifact) == loaded_sha256:
            return artifact, kept
    if tuple(labels) == CLASSES:  # only CIFAR-10's names can be the published weights: serialize only then
        pinned = to_safetensors(state_dict, artifact_metadata(release.meta, source_sha256=release.source_sha256))
        if sha256_hex(pinned) == release.sha256:
            return pinned, dict(release.meta)
    new_meta = weights_meta(state_dict, labels=labels)
    # saved from memory: there is no source file, so no source_sha256
    return to_safetensors(state_dict, artifact_metadata(new_meta, source_sha256="")), new_meta


def save_pretrained(
    state_dict: Mapping[str, torch.Tensor],
    folder: str | os.PathLike[str],
    *,
    labels: Sequence[str],
    meta: Mapping[str, Any],
    repo_id: str | None = None,
) -> Path:
    """Write weights as a Hub folder: the bytes they came from while unchanged, never another maker's credit.

    ``labels`` name the outputs; ``meta`` is what the file the weights were loaded from says (empty if none).
    """
    state = {name: tensor.detach().cpu() for name, tensor in state_dict.items()}
    artifact, kept = _artifact_of(state, labels, meta)
    return write_model_folder(Path(folder), artifact, kept, repo_id=repo_id)


def _announced_sizes(repo_id: str, revision: str | None, token: str | bool | None) -> tuple[str, dict[str, int | None]]:
    """The commit ``revision`` names and the size the Hub announces for each file, asked before any download."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, token=token)
    if not isinstance(info.sha, str) or not re.fullmatch(r"[0-9a-f]{40}", info.sha):
        raise ValueError(f"the Hub named no commit for revision {revision or 'main'} (got {str(info.sha)[:60]!r})")
    return info.sha, {sibling.rfilename: sibling.size for sibling in info.siblings or []}


def _download(repo_id: str, revision: str | None, *, token: str | bool | None = None, local_files_only: bool = False,
              **hub_options: Any) -> Path:
    """The folder of ``model.safetensors`` (and ``config.json``, if the repo has one) of a Hub repo, bounded.

    Online, the sizes the Hub announces are read first (``model_info``), and a file announced larger
    than ``TINIEST_MAX_DOWNLOAD_MB`` is refused before a byte of it is fetched; then only those two
    files are downloaded, from the commit the sizes were read at. Offline, the cached files are read
    bounded by ``load_weights`` and ``_read_config``.
    """
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:
        raise WeightsNotFoundError(f"{repo_id}: Hub repos need huggingface_hub (pip install huggingface_hub)") from None
    names.hf_repo_id(repo_id, "repo_id_or_folder")  # the revision names a file in the Hub cache: no '..'
    if revision is not None:
        names.git_ref(revision, "revision")
    cap = max_download_bytes()
    local_files_only = local_files_only or constants.HF_HUB_OFFLINE  # offline: the cache alone, as huggingface_hub
    where = f"the Hugging Face repo {repo_id!r} (revision {revision or 'main'})"
    try:
        sizes: dict[str, int | None] = {}
        if not local_files_only:
            revision, sizes = _announced_sizes(repo_id, revision, token)
            if WEIGHTS_NAME not in sizes:
                raise WeightsNotFoundError(f"{where} holds no {WEIGHTS_NAME}")
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                size = sizes.get(name)
                if size is not None and size > cap:
                    raise DownloadError(
                        f"{where}: {name} is announced as {size:,} bytes, more than the {cap:,} allowed "
                        "(TINIEST_MAX_DOWNLOAD_MB); not downloaded"
                    )
        options = {"revision": revision, "token": token, "local_files_only": local_files_only, **hub_options}
        weights = Path(hf_hub_download(repo_id, WEIGHTS_NAME, **options))
        if local_files_only or CONFIG_NAME in sizes:
            with contextlib.suppress(EntryNotFoundError, LocalEntryNotFoundError):  # config.json is optional
                hf_hub_download(repo_id, CONFIG_NAME, **options)  # beside the weights: the same snapshot folder
    except (DownloadError, WeightsNotFoundError):
        raise
    except Exception as error:  # huggingface_hub raises many types: report them the same way
        raise WeightsNotFoundError(f"could not get {WEIGHTS_NAME} of {where}: {first_line(error)}") from None
    return weights.parent


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        return {}
    try:  # a config is about 1 KB: a larger one is refused unread (an OSError)
        config = json.loads(read_regular(path, MAX_RECORD_BYTES))
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
        raise ArtifactError(f"{path}: expected JSON of a config ({first_line(error, 120)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("num_classes", 10), int):
        raise ArtifactError(f"{path}: expected an object with an integer num_classes, got {str(config)[:200]}")
    return config


def from_pretrained(
    cls: Callable[..., M],
    repo_id_or_folder: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    device: str | torch.device | None = None,
) -> M:
    """A verified ``cls`` from a local folder or a Hub repo id (``owner/name``), in eval mode."""
    release = TiniestWeights.DEFAULT.release
    spec = os.fspath(repo_id_or_folder)
    local = Path(spec).expanduser()
    pinned_repo = False
    if local.is_dir():
        folder = local
    elif local.exists() or spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"{spec!r}: expected a folder holding {WEIGHTS_NAME} (and {CONFIG_NAME}) or a Hub repo id owner/name"
        )
    else:
        folder = _download(spec, revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                           force_download=force_download)
        hub = release.where["huggingface"]
        pinned_repo = spec == hub["repo_id"] and revision in (None, hub["revision"])
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: expected {WEIGHTS_NAME} (written by save_pretrained or tiniest release)")
    config = _read_config(folder)
    with warnings.catch_warnings():
        if pinned_repo:  # refused below unless verified: not "loaded unverified" first
            warnings.simplefilter("ignore", UnverifiedWeightsWarning)
        loaded = load_weights(weights=weights, progress=False, offline=True)  # read once, bounded
    if pinned_repo and not loaded.verified:
        raise WeightsNotFoundError(
            f"{spec} served {WEIGHTS_NAME} with sha256 {loaded.sha256}, expected the pinned "
            f"{release.sha256}; refusing unverified weights from the pinned repo"
        )
    meta = loaded.meta
    outputs = num_outputs(loaded.state_dict, str(weights))
    if config.get("num_classes", outputs) != outputs:
        raise IncompatibleWeightsError(
            f"{folder / CONFIG_NAME} says num_classes {config['num_classes']}, but {weights} has {outputs} outputs: "
            "the state_dict does not fit; fix config.json or the weights"
        )
    labels = config.get("id2label")
    if isinstance(labels, dict):
        try:
            meta["categories"] = [str(labels[str(i)]) for i in range(outputs)]
        except KeyError:
            raise IncompatibleWeightsError(
                f"{folder / CONFIG_NAME}: expected id2label for 0..{outputs - 1}, got {labels}"
            ) from None
    model = model_from_weights(cls, loaded.state_dict, meta, origin=str(weights))
    return model.to(device) if device is not None else model
