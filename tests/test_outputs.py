"""How outputs are claimed, written aside and put in place (crossent._files), and that every
command's outputs honour the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from crossent import _files
from crossent._files import OutputTaken, atomic_path, claimed
from crossent.cli import main


def ours(path: Path) -> str | None:
    return None if (path / "mine").exists() else "is not ours"


def claim(path: Path, force: bool = False, folder: bool = True) -> object:
    return claimed(path, folder=folder, force=force, option="--out", recognise=ours)


def write(output: Any, text: str, fail: bool = False) -> None:
    """Write ``text`` into the temporary of ``output`` (a claim, or atomic_path); then raise
    ValueError if ``fail``."""
    with output as temporary:
        (temporary / "mine" if temporary.is_dir() else temporary).write_text(text)
        if fail:
            raise ValueError("failed half-way")


def test_a_claimed_output_is_refused_to_a_second_claim_until_released(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with claim(out) as temporary:
        (temporary / "mine").write_text("1")
        with (
            pytest.raises(
                OutputTaken,
                match=r"'.*/out' is being written by another crossent "
                rf"command \(process {os.getpid()}\); wait for it to finish, or "
                r"choose another --out",
            ),
            claim(out, force=True),
        ):
            pass
        assert not out.exists()  # not before the block ends
    assert (out / "mine").read_text() == "1"
    with (
        pytest.raises(
            OutputTaken,
            match=r"'.*/out' already exists; pass --force to replace "
            r"it, or choose another --out",
        ),
        claim(out),
    ):
        pass
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no lock, no temporary left


def test_an_error_in_the_block_leaves_nothing_and_removes_the_folders_it_made(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="failed half-way"):
        write(claim(tmp_path / "a" / "b" / "out"), "half", fail=True)
    assert os.listdir(tmp_path) == []


def test_force_replaces_only_what_is_recognised_and_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes").write_text("precious")
    with (
        pytest.raises(
            OutputTaken,
            match=r"'.*/out' is not ours; --force replaces only what "
            r"crossent wrote, so it was left untouched",
        ),
        claim(out, force=True),
    ):
        pass
    assert (out / "notes").read_text() == "precious"
    (out / "notes").unlink()
    for version in ("1", "2"):  # empty, then ours: both replaced
        with claim(out, force=True) as temporary:
            (temporary / "mine").write_text(version)
        assert (out / "mine").read_text() == version


@pytest.fixture(params=["exchange", "fallback"])
def swap(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of swapping in a new folder: renameat2(RENAME_EXCHANGE), and two renames
    where that is missing."""
    if request.param == "fallback":
        monkeypatch.setattr(_files, "_renameat2", lambda *args: False)
    elif _files._libc_renameat2() is None:
        pytest.skip("no renameat2 here")
    return str(request.param)


def test_a_forced_swap_leaves_the_new_folder_and_nothing_beside_it(
    tmp_path: Path, swap: str
) -> None:
    out = tmp_path / "out"
    for version in ("old", "new"):
        with claim(out, force=True) as temporary:
            (temporary / "mine").write_text(version)
    assert (out / "mine").read_text() == "new"
    assert os.listdir(tmp_path) == ["out"]


def test_a_swap_cut_short_is_undone_by_the_next_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without RENAME_EXCHANGE there is a moment with nothing at the path: killed there, the
    old folder waits at .crossent-old.NAME, and the next claim of NAME puts it back."""
    out = tmp_path / "out"
    with claim(out) as temporary:
        (temporary / "mine").write_text("old")
    monkeypatch.setattr(_files, "_renameat2", lambda *args: False)
    real_rename = os.rename

    def killed_after_the_first(source: object, target: object) -> None:
        real_rename(source, target)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # stands for the kill: not an OSError, so nothing is undone

    monkeypatch.setattr(os, "rename", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        write(claim(out, force=True), "new")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not out.exists()
    assert (tmp_path / ".crossent-old.out" / "mine").read_text() == "old"
    with pytest.raises(ValueError, match="failed half-way"):
        write(claim(out, force=True), "", fail=True)  # the claim alone recovers the old one
    assert (out / "mine").read_text() == "old"
    assert os.listdir(tmp_path) == ["out"]


def test_the_next_claim_removes_what_a_killed_one_left_and_nothing_else(tmp_path: Path) -> None:
    left = [
        ".crossent-0123456789abcdef.out",  # a killed claim's temporary folder
        ".crossent-lock.out",  # its lock, released by the kernel
    ]
    kept = [".crossent-0123456789abcdef.out.csv", ".crossent-0123456789abcdef.other", "x"]
    (tmp_path / left[0]).mkdir()
    for name in [left[1], *kept]:
        (tmp_path / name).write_text("")
    with claim(tmp_path / "out") as temporary:
        (temporary / "mine").write_text("1")
    assert sorted(os.listdir(tmp_path)) == sorted(["out", *kept])


def test_atomic_path_replaces_a_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(ValueError, match="failed half-way"):
        write(atomic_path(path), "ha", fail=True)
    assert path.read_text() == "old"
    with atomic_path(path) as temporary:
        temporary.write_text("new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize(
    ("umask", "file", "folder"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_every_output_honours_the_umask(tmp_path: Path, umask: int, file: int, folder: int) -> None:
    """train, predict, compress, decompress and score --json, under umask 022 and 077."""
    previous = os.umask(umask)
    try:
        run, data = tmp_path / "run", tmp_path / "data.csv"
        data.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{'abc'[i % 3]}\n" for i in range(30)))
        commands = [
            ["train", data, "--target", "y", "--epochs", "2", "--no-reference", "--out", run],
            ["predict", run, data, "-o", tmp_path / "p.parquet"],
            ["score", tmp_path / "p.parquet", "--target", "y", "--json", tmp_path / "s.json"],
            ["compress", run, data, "--target", "y", "-o", tmp_path / "l.xent"],
            ["decompress", run, data, tmp_path / "l.xent", "-o", tmp_path / "l.csv"],
        ]
        for argv in commands:
            assert main([str(a) for a in argv]) == 0
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes.pop(Path("data.csv")) == 0o666 & ~umask
    assert modes.pop(Path("run")) == folder
    assert len(modes) == 7 + 4, modes  # the run's files, and the other commands' outputs
    assert set(modes.values()) == {file}, modes
