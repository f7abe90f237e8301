"""What ingest must not let through unnoticed: one person under contradicting labels (within a
split: quarantined; across the official splits: kept and reported), and images reached through
symlinks that leave the data root (quarantined; links inside the root are followed).

The annotation tables are built by hand, tiny, with the writers of test_readers.py.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
from support import repo_params
from test_ingest import make_caers, noise_image, quarantine_of, write_params
from test_readers import image_record, row, train_person, write_csv, write_emotic_mat

from core.data.ingest import run
from core.data.manifest import read_manifest
from stages.ingest import main


def quarantine_rows(out: Path) -> dict[str, dict]:
    return {r["source_ref"]: r for r in pq.read_table(out / "manifest" / "quarantine.parquet").to_pylist()}


def emotic_cfg(root: Path, annotations: str):
    return replace(repo_params().data, kind="emotic", root=str(root), annotations=annotations, verify_images=True)


# ------------------------------------------ same image and box, different labels, one split

def test_conflicting_labels_in_one_split_quarantine_every_row_of_the_person(tmp_path, capsys):
    root = tmp_path / "raw"
    folder = "site/images"
    for i, name in enumerate(("a.jpg", "b.jpg", "c.jpg", "d.jpg")):
        noise_image(root / folder / name, (64, 48), seed=i)
    write_emotic_mat(root / "Annotations.mat", {
        "train": [
            image_record(folder, "a.jpg", (64, 48), [
                train_person([4, 5, 30, 40], ["Peace"]),
                train_person([4, 5, 30, 40], ["Anger"]),             # same person, other label
                train_person([4, 5, 30, 40], ["Peace"]),             # verbatim copy of person[0]
                train_person([10, 10, 50, 40], ["Fear"]),            # another person: kept
            ]),
            image_record(folder, "b.jpg", (64, 48), [train_person([1, 1, 20, 20], ["Pain"])]),
        ],
        "val": [image_record(folder, "c.jpg", (64, 48), [train_person([1, 1, 20, 20], ["Anger"])])],
        "test": [image_record(folder, "d.jpg", (64, 48), [train_person([1, 1, 20, 20], ["Esteem"])])],
    })
    params = write_params(tmp_path / "params.yaml", {"kind": "emotic", "root": str(root),
                                                     "annotations": "Annotations.mat", "verify_images": True})
    out, metrics = tmp_path / "data", tmp_path / "reports" / "ingest.json"
    assert main(["--params", str(params), "--out", str(out), "--metrics", str(metrics)]) == 0

    train = read_manifest("train", out / "manifest")
    assert list(train["sample_id"]) == ["train/site/images/a.jpg#3", "train/site/images/b.jpg#0"]
    q = quarantine_rows(out)
    refs = [f"Annotations.mat:train[0]/person[{k}]" for k in range(3)]
    assert {ref: q[ref]["reason"] for ref in q} == dict.fromkeys(refs, "conflicting_labels")
    assert q[refs[0]]["detail"] == (
        "same image and box with different labels: ['Peace'] here, ['Anger'] at "
        f"{refs[1]}, ['Peace'] at {refs[2]}; none of them is kept")
    assert all(q[ref]["split"] == "train" and q[ref]["image_path"] == "site/images/a.jpg" for ref in refs)
    report = json.loads(metrics.read_text())
    assert report["conflicting_labels"] == 3 and report["quarantined"] == 3
    assert report["cross_split_persons"] == {"total": 0, "by_splits": {}, "persons": []}
    printed = capsys.readouterr().out
    assert "quarantined 3: conflicting_labels 3" in printed and "warning" not in printed


# ------------------------------------- same image and box in two splits, different labels

def test_same_person_in_two_splits_with_other_labels_is_kept_and_reported(tmp_path, capsys):
    root = tmp_path / "raw"
    for i, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        noise_image(root / "f/images" / name, (64, 48), seed=i)
    write_csv(root / "annotations_train.csv", [
        row(0, filename="a.jpg", cats="['Anger']"),
        row(1, filename="b.jpg", box="[2, 2, 20, 20]", cats="['Fear']"),
    ])
    write_csv(root / "annotations_val.csv", [
        row(0, filename="a.jpg", cats="['Anger']"),                           # verbatim copy of train
        row(1, filename="c.jpg", cats="['Peace']"),
    ])
    write_csv(root / "annotations_test.csv", [
        row(0, filename="a.jpg", cats="['Anger', 'Fear']"),                   # train's person, other labels
        row(1, filename="a.jpg", box="[5, 5, 40, 40]", cats="['Pain']"),      # same image, other person
        row(2, filename="b.jpg", box="[2, 2, 20, 20]", cats="['Peace']"),     # train's person, other label
    ])
    params = write_params(tmp_path / "params.yaml", {"kind": "emotic", "root": str(root),
                                                     "annotations": "annotations_train.csv", "verify_images": True})
    out, metrics = tmp_path / "data", tmp_path / "reports" / "ingest.json"
    assert main(["--params", str(params), "--out", str(out), "--metrics", str(metrics)]) == 0

    # the official splits are the data set's: both copies stay where the annotations put them
    summary = json.loads((out / "manifest" / "summary.json").read_text())
    assert summary["rows"] == {"train": 2, "val": 1, "test": 3, "total": 6}
    assert quarantine_of(out) == {"annotations_val.csv:row 0": "duplicate_row"}
    expected = {"total": 2, "by_splits": {"train+test": 2}, "persons": [
        {"image_path": "f/images/a.jpg", "box": [1.0, 2.0, 30.0, 40.0], "splits": ["train", "test"],
         "sample_ids": ["train/f/images/a.jpg#0", "test/f/images/a.jpg#0"]},
        {"image_path": "f/images/b.jpg", "box": [2.0, 2.0, 20.0, 20.0], "splits": ["train", "test"],
         "sample_ids": ["train/f/images/b.jpg#0", "test/f/images/b.jpg#0"]},
    ]}
    assert summary["cross_split_persons"] == expected
    report = json.loads(metrics.read_text())
    assert report["cross_split_persons"] == expected and report["conflicting_labels"] == 0
    printed = capsys.readouterr().out
    assert ("warning: 2 persons (same image and box) are in more than one split with different labels "
            "(train+test 2); kept, because ingest does not change the data set's own splits; "
            "listed under cross_split_persons in summary.json and the metrics file, e.g. "
            "f/images/a.jpg [1, 2, 30, 40] in train+test") in printed


# -------------------------------------------------------------------------------- symlinks

def test_image_symlinks_are_followed_inside_the_root_and_quarantined_outside(tmp_path):
    root, elsewhere = tmp_path / "raw", tmp_path / "elsewhere"
    folder = "site/images"
    noise_image(root / folder / "real.jpg", (64, 48), seed=1)
    noise_image(root / "pool" / "pooled.jpg", (40, 30), seed=2)
    noise_image(elsewhere / "outside.jpg", (64, 48), seed=3)
    noise_image(elsewhere / "dir" / "deep.jpg", (64, 48), seed=4)
    os.symlink("../../pool/pooled.jpg", root / folder / "in_link.jpg")
    os.symlink(elsewhere / "outside.jpg", root / folder / "out_link.jpg")
    os.symlink(elsewhere / "dir", root / "site" / "linked")        # a folder of images linked in
    write_emotic_mat(root / "Annotations.mat", {
        "train": [
            image_record(folder, "in_link.jpg", (40, 30), [train_person([1, 1, 20, 20], ["Peace"])]),
            image_record(folder, "out_link.jpg", (64, 48), [train_person([1, 1, 20, 20], ["Fear"])]),
            image_record("site/linked", "deep.jpg", (64, 48), [train_person([1, 1, 20, 20], ["Pain"])]),
            image_record(folder, "real.jpg", (64, 48), [train_person([1, 1, 20, 20], ["Anger"])]),
        ],
        "val": [image_record(folder, "real.jpg", (64, 48), [train_person([2, 2, 30, 30], ["Anger"])])],
        "test": [image_record(folder, "real.jpg", (64, 48), [train_person([3, 3, 30, 30], ["Anger"])])],
    })
    out = tmp_path / "data"
    summary = run(emotic_cfg(root, "Annotations.mat"), seed=0, out_dir=out)

    train = read_manifest("train", out / "manifest")
    assert list(train["image_path"]) == ["site/images/in_link.jpg", "site/images/real.jpg"]
    assert (train["image_w"][0], train["image_h"][0]) == (40, 30)   # the linked file's own size
    q = quarantine_rows(out)
    assert {ref: r["reason"] for ref, r in q.items()} == {
        "Annotations.mat:train[1]/person[0]": "symlink_outside_root",
        "Annotations.mat:train[2]/person[0]": "symlink_outside_root"}
    assert q["Annotations.mat:train[1]/person[0]"]["detail"] == \
        f"symlink outside the data root: {(elsewhere / 'outside.jpg').resolve()}"
    assert q["Annotations.mat:train[2]/person[0]"]["detail"] == \
        f"symlink outside the data root: {(elsewhere / 'dir' / 'deep.jpg').resolve()}"
    assert summary["quarantine"]["by_reason"] == {"symlink_outside_root": 2}


def test_caers_class_folder_symlinks_follow_the_same_rule(tmp_path):
    root, elsewhere = tmp_path / "caers", tmp_path / "elsewhere"
    make_caers(root, {"train/Angry": 2, "val/Angry": 1, "test/Angry": 1, "extra/Sad": 2})
    make_caers(elsewhere, {"Happy": 3, "files": 1})
    os.symlink(elsewhere / "Happy", root / "train" / "Happy")              # class folder outside
    os.symlink("../extra/Sad", root / "train" / "Sad")                     # class folder inside
    os.symlink(elsewhere / "files" / "0000.png", root / "train" / "Angry" / "out.png")
    os.symlink("../../extra/Sad/0001.png", root / "train" / "Angry" / "in.png")
    os.symlink("..", root / "train" / "Angry" / "loop")                    # back to train/
    out = tmp_path / "data"
    summary = run(replace(repo_params().data, kind="caers", root=str(root), annotations=None), seed=0, out_dir=out)

    train = read_manifest("train", out / "manifest")
    assert sorted(train["sample_id"]) == ["train/Angry/0000.png", "train/Angry/0001.png", "train/Angry/in.png",
                                          "train/Sad/0000.png", "train/Sad/0001.png"]
    q = quarantine_rows(out)
    assert {ref: r["reason"] for ref, r in q.items()} == {
        "train/Happy/": "symlink_outside_root",
        "train/Angry/out.png": "symlink_outside_root",
        "train/Angry/loop/": "symlink_loop"}
    assert q["train/Happy/"]["detail"] == (f"symlink outside the data root: {(elsewhere / 'Happy').resolve()} "
                                           "(a directory: not entered, so its files are neither read nor counted)")
    assert (q["train/Happy/"]["image_path"], q["train/Happy/"]["split"]) == ("train/Happy", "train")
    assert q["train/Angry/out.png"]["detail"] == \
        f"symlink outside the data root: {(elsewhere / 'files' / '0000.png').resolve()}"
    assert q["train/Angry/loop/"]["detail"] == \
        f"symlink back to {(root / 'train').resolve()}, a folder it is inside of (not entered again)"
    assert summary["quarantine"]["by_reason"] == {"symlink_loop": 1, "symlink_outside_root": 2}


def test_an_unlistable_caers_folder_is_quarantined_not_a_traceback(tmp_path, monkeypatch):
    from core.data.readers import read_caers

    root = tmp_path / "caers"
    make_caers(root, {"train/Sad": 2, "train/Fear": 1, "test/Sad": 1})
    iterdir = Path.iterdir

    def denied(self):  # chmod 000 does not stop root, which the tests may run as
        if self.name == "Fear":
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    result = read_caers(root)
    assert [(r["reason"], r["source_ref"], r["detail"]) for r in result.quarantine.rows] == [
        ("unreadable_folder", "train/Fear/", "cannot list the folder: Permission denied")]
    assert sorted(c.sample_id for c in result.candidates) == ["test/Sad/0000.png", "train/Sad/0000.png",
                                                               "train/Sad/0001.png"]
