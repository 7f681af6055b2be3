"""Atomic writes: an interruption mid-write leaves the old file (or none), never half a file."""
import os

import pytest

from scoresde._io import atomic_path, write_csv, write_json


def test_interrupted_write_leaves_previous_file(tmp_path):
    target = tmp_path / "results.json"
    write_json(str(target), {"ok": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(target)) as tmp, open(tmp, "w") as f:
            f.write('{"half": ')
            raise KeyboardInterrupt
    assert target.read_text().strip().startswith('{\n  "ok": 1')
    assert os.listdir(tmp_path) == ["results.json"]


def test_interrupted_first_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(tmp_path / "new.csv")) as tmp, open(tmp, "w") as f:
            f.write("a,b\n1,")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_csv_has_union_of_columns(tmp_path):
    write_csv(str(tmp_path / "r.csv"), [{"a": 1}, {"a": 2, "b": 3}])
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,b", "1,", "2,3"]
