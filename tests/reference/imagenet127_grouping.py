"""Writes src/cissl/data/sources/data/imagenet127.json: the 1000 -> 127 class grouping of Small-ImageNet-127.

Run by hand (the project never reads these sources at run time):

    python tests/reference/imagenet127_grouping.py SEVAL_REPO DEBIASPL_REPO

where the two arguments are checkouts of github.com/ZerojumpLine/SEVAL and
github.com/linzhiqiu/debiased-pseudo-labeling. Where the grouping comes from:

- the 127 classes and their order: ``synset_words_up_down_127.txt``, the WordNet synsets of Huh,
  Agrawal and Efros, "What makes ImageNet good for transfer learning?" (2016), as the CISSL code bases
  ship it (SEVAL's data/imagenet/, DebiasPL's imagenet127/; both files list the same synsets in the
  same order; class c of Small-ImageNet-127 is line c);
- the ILSVRC-2012 class ids 1..1000 that the downsampled ImageNet pickles (Imagenet32 / Imagenet64)
  use as labels: SEVAL's ``data/imagenet/map_clsloc.txt`` (wnid, id, name);
- which of the 127 classes each of the 1000 synsets belongs to: the image paths
  (``train/<wnid>/<file>``) and targets of DebiasPL's ImageNet-127 index files
  (``indexes/imagenet127/*/{train,val}.csv``), which cover all 1000 synsets, each with one target.
  (SEVAL's builder reads the same grouping from a 1.28-million-line image list, imgname2folder.txt.)

Checked before writing: every synset has exactly one target, all 127 targets occur, and the 50 000
validation labels of DebiasPL's ``imagenet127/val_up_down_127.txt`` (an independent file: image
name -> target) give every class exactly 50 x (its number of synsets) images, as ILSVRC-2012's 50
validation images per synset require.
"""

from __future__ import annotations

import collections
import csv
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "src" / "cissl" / "data" / "sources" / "data" / "imagenet127.json"


def main(seval: Path, debiaspl: Path) -> None:
    classes = [line.split(maxsplit=1) for line in
               (seval / "data" / "imagenet" / "synset_words_up_down_127.txt").read_text().splitlines() if line.strip()]
    other = [line.split(maxsplit=1)[0] for line in
             (debiaspl / "imagenet127" / "synset_words_up_down_127.txt").read_text().splitlines() if line.strip()]
    assert [wnid for wnid, _ in classes] == other and len(classes) == 127, "the two 127-class lists differ"
    ilsvrc = {}
    for line in (seval / "data" / "imagenet" / "map_clsloc.txt").read_text().splitlines():
        wnid, number, name = line.split()
        ilsvrc[int(number)] = (wnid, name)
    assert sorted(ilsvrc) == list(range(1, 1001))
    targets = collections.defaultdict(set)
    for index_file in sorted((debiaspl / "indexes" / "imagenet127").glob("*/*.csv")):
        if index_file.stem not in ("train", "val"):
            continue
        with index_file.open() as handle:
            for row in csv.DictReader(handle):
                targets[row["Path"].split("/")[1]].add(int(row["Target"]))
    assert len(targets) == 1000 and all(len(t) == 1 for t in targets.values()), "a synset without one target"
    group = {wnid: next(iter(t)) for wnid, t in targets.items()}
    assert set(group.values()) == set(range(127))
    assert set(group) == {wnid for wnid, _ in ilsvrc.values()}
    synsets_per_class = collections.Counter(group.values())
    val = collections.Counter(int(line.split()[1]) for line in
                              (debiaspl / "imagenet127" / "val_up_down_127.txt").read_text().splitlines())
    assert all(val[c] == 50 * synsets_per_class[c] for c in range(127)), "validation counts disagree"
    table = {
        "about": "Small-ImageNet-127: class of each ILSVRC-2012 id (the labels 1..1000 of the downsampled "
                 "ImageNet pickles); written by tests/reference/imagenet127_grouping.py, sources named there",
        "classes": [{"wnid": wnid, "name": name.strip()} for wnid, name in classes],
        "ilsvrc": [{"id": number, "wnid": ilsvrc[number][0], "name": ilsvrc[number][1],
                    "class": group[ilsvrc[number][0]]} for number in range(1, 1001)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join  # one entry per line: a readable diff when the table is regenerated
    OUT.write_text("{\n" + f'"about": {json.dumps(table["about"])},\n'
                   + '"classes": [\n' + lines(json.dumps(c) for c in table["classes"]) + "\n],\n"
                   + '"ilsvrc": [\n' + lines(json.dumps(c) for c in table["ilsvrc"]) + "\n]\n}\n")
    print(f"wrote {OUT}: 1000 synsets in 127 classes, {max(synsets_per_class.values())} synsets in the largest, "
          f"{min(synsets_per_class.values())} in the smallest; validation counts agree")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
