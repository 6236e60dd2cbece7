"""Adding a dataset is adding one adapter: a class that indexes a copy and says which splits it holds,
registered by name. Here a toy source ("emolist": a ``<split>.txt`` list of ``file class`` lines beside
the images) is defined, registered, loaded through ``load_dataset``, checked and trained on like any other."""
from pathlib import Path

import pytest

import fakes
from hsbs_lib.config import load_config
from hsbs_lib.data.checks import check_dataset
from hsbs_lib.data.datasets import (FileDataset, dataset_splits, list_datasets, load_dataset, register_dataset,
                                    unregister_dataset)
from hsbs_lib.data.labels import CANONICAL_7
from hsbs_lib.engine.train import fit


class EmoList(FileDataset):
    """``<root>/<split>.txt`` with lines ``image.png class_name``; images beside the lists."""

    name = "emolist"

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False,
                 upper_case: bool = False):
        super().__init__(root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        listing = Path(root) / f"{split}.txt"
        if not listing.is_file():
            raise ValueError(f"emolist: unknown split {split!r}; splits here: {self.splits_on_disk(Path(root))}")
        for line in listing.read_text().splitlines():
            file_name, class_name = line.split()
            label = self._class_label(class_name.lower() if upper_case else class_name)
            if label is not None:
                self.samples.append((str(Path(root) / file_name), label))
        self._finish()

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        return sorted(path.stem for path in Path(root).glob("*.txt"))


@pytest.fixture
def emolist(tmp_path):
    """A registered toy adapter and a copy of its data: two images per class and split."""
    register_dataset("emolist", aliases=("emo-list",))(EmoList)
    root = tmp_path / "emolist"
    for split in ("train", "test"):
        lines = []
        for class_name in CANONICAL_7:
            for k in range(2):
                file_name = f"{split}_{class_name}_{k}.png"
                fakes.write_class_image(root / file_name, class_name, size=(16, 16))
                lines.append(f"{file_name} {class_name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    yield root
    unregister_dataset("emolist")
    assert "emolist" not in list_datasets()


def test_a_registered_adapter_is_served_by_name(emolist):
    assert "emolist" in list_datasets()
    assert dataset_splits("emo-list", emolist) == ["test", "train"]
    dataset = load_dataset("emolist", emolist, "train", upper_case=False)
    assert len(dataset) == 14 and dataset.classes == CANONICAL_7
    assert sorted(dataset.targets) == sorted(list(range(7)) * 2)
    assert dataset.load_image(0).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="unknown option.*fold.*accepted: upper_case"):
        load_dataset("emolist", emolist, "train", fold=1)
    report = check_dataset("emolist", emolist)
    assert report.ok and set(report.splits) == {"train", "test"}


def test_a_registered_adapter_trains_through_the_engine(emolist, tmp_path):
    config = load_config(None, ["data.name=emolist", f"data.root={emolist}", "data.val_split=none",
                                "data.input_size=16", "model.name=baseline", "model.stem=small",
                                "model.backbone_width=16", "train.epochs=1", "train.batch_size=7",
                                f"data.cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'run'}"])
    result = fit(config)
    assert result.classes == CANONICAL_7 and (tmp_path / "run" / "eval.json").is_file()
    assert result.best["dataset"] == "emolist" and sum(map(sum, result.best["confusion_matrix"])) == 14
