"""ImageNet-1k class table: index <-> WordNet synset <-> name."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[int, str, str]]:
    """(index, synset, name) for the 1000 classes, in the standard index order."""
    text = resources.files("edgepipe.data").joinpath("imagenet_classes.tsv").read_text()
    rows = []
    for line in text.splitlines()[1:]:
        index, synset, name = line.split("\t")
        rows.append((int(index), synset, name))
    return rows


@lru_cache(maxsize=1)
def synset_to_index() -> dict[str, int]:
    return {synset: index for index, synset, _ in imagenet_classes()}


def class_name(index: int) -> str:
    return imagenet_classes()[index][2]
