"""``tiniest release``: from a finished run (or a checkpoint) to everything a publication needs.

The work is ``tiniest.release.make_release``'s; this module converts the command line to it
and prints where the files went.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tiniest import names
from tiniest.commands._common import read_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a finished `tiniest train` folder, its checkpoint.pt, or a state_dict .pt/.safetensors")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to write the release into")
    parser.add_argument("--name", help="release name, the TiniestWeights member (default: <DATA>_<SHA8>, "
                        "CIFAR10_<SHA8> for CIFAR-10's classes)")
    parser.add_argument("--github-repo", metavar="OWNER/NAME",
                        help="your GitHub repo hosting the asset (required for new weights)")
    parser.add_argument("--tag", help="GitHub release tag (default: weights-<sha8>)")
    parser.add_argument("--hf-repo-id", metavar="OWNER/NAME",
                        help="your Hugging Face model repo (required for new weights)")
    parser.add_argument("--hf-revision", help="Hub revision to pin in the record (default: the tag, created on upload)")
    parser.add_argument("--license", help="licence of new weights: a Hub licence id such as mit or apache-2.0, "
                        "or any name with --license-link (default: unknown, unstated)")
    parser.add_argument("--license-link", metavar="URL",
                        help="where the text of a licence outside the Hub's list is (the card's license_link)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier release in --output (default: refuse a non-empty folder)")
    parser.add_argument("--metrics", type=Path, help="JSON file of measured metrics for weights without a run")


def run(args: argparse.Namespace) -> int:
    from tiniest.release import HF_FOLDER, INSTRUCTIONS_NAME, RECORD_NAME, make_release  # (torch: only now)

    record = make_release(
        args.source,
        args.output,
        name=args.name,
        github_repo=args.github_repo,
        tag=args.tag,
        hf_repo_id=args.hf_repo_id,
        hf_revision=args.hf_revision,
        license=args.license,
        license_link=args.license_link,
        metrics=read_metrics(args.metrics),
        overwrite=args.overwrite,
    )
    output: Path = args.output
    shown = names.printable(str(output))
    print(f"{shown}/{record['filename']}\nsha256 {record['sha256']}\nsize {record['size']} bytes")
    print(f"Hugging Face folder: {shown}/{HF_FOLDER}")
    print(f"release record: {shown}/{RECORD_NAME}  (paste into tiniest/weights/release.json)")
    print(f"how to publish: {shown}/{INSTRUCTIONS_NAME}")
    return 0
