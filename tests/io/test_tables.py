"""CSV tables: the atomic writer, reading with required columns, EchoNet-Dynamic's FileList.csv."""

from __future__ import annotations

import pytest

from sslseg.io.tables import filelist_name, read_filelist, read_table, write_table


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    write_table(path, [{"step": 1, "loss": 0.5}])
    old = path.read_text()

    class Full:
        def __init__(self, *a, **k):
            pass

        def writeheader(self):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("sslseg.io.tables.csv.DictWriter", Full)
    with pytest.raises(OSError):
        write_table(path, [{"step": 2, "loss": 0.1}])
    assert path.read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_columns_are_every_key_in_order_unless_given(tmp_path):
    path = write_table(tmp_path / "sub" / "t.csv", [{"a": 1}, {"b": 2, "a": 3}])
    assert path.read_text().splitlines() == ["a,b", "1,", "3,2"]
    write_table(path, [{"a": 1, "x": 9}], ["a"], extrasaction="ignore")
    assert path.read_text().splitlines() == ["a", "1"]
    with pytest.raises(ValueError):
        write_table(path, [{"a": 1, "x": 9}], ["a"])
    assert path.read_text().splitlines() == ["a", "1"]


def test_read_table_strips_and_names_the_problem(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes("\ufeff a ,b\n 1 , x \n".encode())
    assert read_table(p, ("a", "b")) == [{"a": "1", "b": "x"}]
    with pytest.raises(ValueError, match=r"t\.csv: missing column\(s\) c and d; found a, b"):
        read_table(p, ("a", "c", "d"))
    p.write_text("a,b\n1,2,3\n")
    with pytest.raises(ValueError, match=r"t\.csv line 2: 3 fields, the header names 2"):
        read_table(p)
    p.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_table(p)
    with pytest.raises(ValueError, match=r"nothere\.csv: file not found"):
        read_table(tmp_path / "nothere.csv")


def test_filelist(tmp_path):
    p = tmp_path / "FileList.csv"
    p.write_text("FileName,EF,ESV,EDV,Split\n0X1,55.5,1,2,TRAIN\n0X2.AVI,61.0,1,2,TEST\n")
    rows = read_filelist(p)
    assert [filelist_name(r["FileName"]) for r in rows] == ["0X1", "0X2"]
    with pytest.raises(ValueError, match=r"missing column\(s\) FPS"):
        read_filelist(p, ("FileName", "FPS"))
