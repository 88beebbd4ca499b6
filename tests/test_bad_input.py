"""Bad input, every command: one line that names the file, the column, the row and the value,
the documented exit status, and nothing written. The table of docs/failure-modes.md.

Run in-process through ``crossent.cli.main`` (the whole command line, faster than a
subprocess); tests/test_faults.py runs the real command in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from sklearn import datasets

from crossent.cli import main
from crossent.coding.labels import MAGIC

QUICK = ["--epochs", "3", "--no-reference"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """iris as CSV, a run folder trained on it, and its labels compressed."""
    folder = tmp_path_factory.mktemp("inputs")
    loaded = datasets.load_iris()
    columns = {name: loaded.data[:, i] for i, name in enumerate(loaded.feature_names)}
    columns["species"] = np.asarray(loaded.target_names)[loaded.target]
    pa_csv.write_csv(pa.table(columns), folder / "iris.csv")
    paths = {"data": folder / "iris.csv", "run": folder / "run", "xent": folder / "l.xent"}
    data = str(paths["data"])
    assert main(["train", data, "--target", "species", *QUICK, "--out", str(paths["run"])]) == 0
    assert (
        main(["compress", str(paths["run"]), data, "--target", "species", "-o", str(paths["xent"])])
        == 0
    )
    return paths


@dataclass(frozen=True)
class Case:
    """A command on a damaged input: ``make(inputs, folder)`` writes what it needs into
    ``folder`` and returns the command's arguments (``OUT`` marks the output path)."""

    name: str
    make: Callable[[dict[str, Path], Path], list[object]]
    message: str  # a regular expression for the line after "crossent COMMAND: error: "
    status: int = 2


def copy_run(inputs: dict[str, Path], folder: Path, change: Callable[[Path], None]) -> Path:
    run = folder / "run"
    run.mkdir()
    for name in ("model.pt", "model.json"):
        (run / name).write_bytes((inputs["run"] / name).read_bytes())
    change(run)
    return run


def csv(folder: Path, text: str, name: str = "bad.csv") -> Path:
    (folder / name).write_text(text)
    return folder / name


def forged_xent(inputs: dict[str, Path], folder: Path, **fields: object) -> Path:
    """The compressed labels with header fields replaced and the checksum made to match."""
    data = inputs["xent"].read_bytes()[:-32]
    (length,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header = {**json.loads(data[start : start + length]), **fields}
    encoded = json.dumps(header).encode()
    body = MAGIC + struct.pack("<I", len(encoded)) + encoded + data[start + length :]
    path = folder / "forged.xent"
    path.write_bytes(body + hashlib.sha256(body).digest())
    return path


def predict(inputs: dict[str, Path], data: Path, run: Path | None = None) -> list[object]:
    return ["predict", run or inputs["run"], data, "-o", "OUT.csv"]


def predict_with(change: Callable[[Path], None]) -> Callable[[dict[str, Path], Path], list]:
    """`predict` with a copy of the run folder changed by ``change``."""
    return lambda i, f: predict(i, i["data"], copy_run(i, f, change))


def truncate_weights(run: Path) -> None:
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:500])


def edit_card(old: str, new: str) -> Callable[[Path], None]:
    def change(run: Path) -> None:
        card = run / "model.json"
        card.write_text(re.sub(old, new, card.read_text(), count=1))

    return change


def decompress(forged: Callable[[dict[str, Path], Path], Path]) -> Callable[..., list]:
    return lambda i, f: ["decompress", i["run"], i["data"], forged(i, f), "-o", "OUT.csv"]


def parquet(parent: Path, table: pa.Table) -> Path:
    pq.write_table(table, parent / "t.parquet")
    return parent / "t.parquet"


def folder(parent: Path, name: str, *files: str) -> Path:
    (parent / name).mkdir()
    for file in files:
        (parent / name / file).write_text("mine\n")
    return parent / name


def list_header(parent: Path) -> Path:
    encoded = b"[1, 2]"
    body = MAGIC + struct.pack("<I", len(encoded)) + encoded
    (parent / "list.xent").write_bytes(body + hashlib.sha256(body).digest())
    return parent / "list.xent"


IRIS = '"sepal length (cm)","sepal width (cm)","petal length (cm)","petal width (cm)","species"\n'
UNTOUCHED = "--force replaces only what crossent wrote, so it was left untouched"
LR_TOO_HIGH = (
    r"the training loss became (inf|NaN) at epoch \d+, step \d+: lower --lr \(it is 1e\+06\)"
)

CASES = [
    # damaged or mismatched run folders
    Case(
        "a truncated model.pt",
        predict_with(truncate_weights),
        r"'.*/run/model.pt' is damaged: torch cannot read it \(.+\)",
    ),
    Case(
        "a model.json of another network",
        predict_with(edit_card(r'"hidden": \[\]', '"hidden": [8]')),
        r"'.*/run/model.json' does not match '.*/run/model.pt': "
        r"the weights have no 'network.2.bias'",
    ),
    Case(
        "a model.json that is not JSON",
        predict_with(edit_card(r"^\{", "{'")),
        r"'.*/run/model.json' is damaged: it is not JSON",
    ),
    Case(
        "a model.json with a scale of 0",
        predict_with(edit_card(r'"scale": \[\s*[0-9.e-]+', '"scale": [0')),
        r"'.*/run/model.json' is not a crossent model card: "
        r"'scale' must be a positive number per feature",
    ),
    # forged .xent files: well-formed, with a checksum that matches
    Case(
        "a forged .xent header field",
        decompress(lambda i, f: forged_xent(i, f, chunk_rows="many")),
        r"'.*/forged.xent' is damaged: its header's field 'chunk_rows' must be a whole "
        r"number ≥ 1; got 'many'",
    ),
    Case(
        "a forged .xent that claims 10^15 labels",
        decompress(lambda i, f: forged_xent(i, f, labels=10**15)),
        r"'.*/forged.xent' holds 1,000,000,000,000,000 labels, but the data has 150 rows",
    ),
    Case(
        "a forged .xent of other classes",
        decompress(lambda i, f: forged_xent(i, f, classes=7)),
        r"'.*/forged.xent' holds labels of 7 classes; the model has 3",
    ),
    Case(
        "a .xent header that is a list",
        decompress(lambda i, f: list_header(f)),
        r"'.*/list.xent' is damaged: its header is not a JSON object",
    ),
    # tables with columns that cannot be told apart or read
    Case(
        "duplicate column names (train)",
        lambda i, f: ["train", csv(f, "a,b,a,y\n1,2,3,x\n"), "--target", "y", "--out", "OUT"],
        r"'.*/bad.csv' has two columns named 'a' \(columns 1 and 3\); "
        r"give every column its own name",
    ),
    Case(
        "duplicate column names (score)",
        lambda i, f: ["score", csv(f, "y,a,a\na,0.5,0.5\n"), "--target", "y"],
        r"'.*/bad.csv' has two columns named 'a' \(columns 2 and 3\)",
    ),
    Case(
        "a Parquet label column of lists (train)",
        lambda i, f: [
            "train",
            parquet(f, pa.table({"a": [1.0, 2.0], "y": [[1], [2]]})),
            *("--target", "y", "--out", "OUT"),
        ],
        r"'.*/t.parquet', column 'y', must hold integer or text labels; "
        r"it holds list<element: int64>",
    ),
    Case(
        "a Parquet label column of structs (score)",
        lambda i, f: [
            "score",
            parquet(f, pa.table({"y": [{"k": 1}], "a": [1.0]})),
            "--target",
            "y",
        ],
        r"'.*/t.parquet', column 'y', holds struct<k: int64>, where text is expected",
    ),
    Case(
        "an empty CSV file",
        lambda i, f: ["score", csv(f, ""), "--target", "y"],
        r"'.*/bad.csv' is empty: a CSV file needs a header row",
    ),
    Case(
        "a .parquet file that is not Parquet",
        lambda i, f: ["score", csv(f, "y,a\nx,1\n", "t.parquet"), "--target", "y"],
        r"cannot read '.*/t.parquet': .*Parquet magic bytes not found",
    ),
    # outputs that must not be replaced
    Case(
        "predict -o onto an existing folder",
        lambda i, f: [*predict(i, i["data"])[:3], "-o", folder(f, "OUT.csv")],
        r"'.*/OUT.csv' already exists; pass --force to replace it, or choose another -o/--output",
    ),
    Case(
        "predict -o onto an existing folder with --force",
        lambda i, f: [*predict(i, i["data"])[:3], "-o", folder(f, "OUT.csv"), "--force"],
        rf"'.*/OUT.csv' is a folder, not a file; {UNTOUCHED}: remove it yourself or choose "
        r"another -o/--output",
    ),
    Case(
        "compress -o --force onto a file crossent did not write",
        lambda i, f: [
            *("compress", i["run"], i["data"], "--target", "species"),
            *("-o", csv(f, "notes\n", "OUT.xent"), "--force"),
        ],
        rf"'.*/OUT.xent' is not a crossent compressed-labels file; {UNTOUCHED}",
    ),
    Case(
        "score --json onto an existing file",
        lambda i, f: [
            *("score", csv(f, "y,a,b\na,0.5,0.5\n", "p.csv"), "--target", "y"),
            *("--json", csv(f, "{}", "OUT.json")),
        ],
        r"'.*/OUT.json' already exists; pass --force to replace it, or choose another --json",
    ),
    Case(
        "train --out --force onto a folder that is not a run",
        lambda i, f: [
            *("train", i["data"], "--target", "species"),
            *("--out", folder(f, "OUT", "notes.txt"), "--force"),
        ],
        r"'.*/OUT' is not a crossent run folder: it holds 'notes.txt', which a run does not write",
    ),
    # values: the file, the row (a spreadsheet's: the header is row 1), the column, the value
    Case(
        "a text value among the features (predict)",
        lambda i, f: predict(
            i, csv(f, IRIS + "5.1,3.5,1.4,0.2,setosa\n4.9,three,1.4,0.2,setosa\n")
        ),
        r"'.*/bad.csv' has 'three' at row 3, column 'sepal width \(cm\)', "
        r"where a number is expected",
    ),
    Case(
        "a text value among the predictions (score)",
        lambda i, f: [
            "score",
            csv(f, "y,a,b\na,0.5,0.5\nb,0.5,0.5\na,half,0.5\n"),
            "--target",
            "y",
        ],
        r"'.*/bad.csv' has 'half' at row 4, column 'a', where a number is expected",
    ),
    Case(
        "a text feature (train)",
        lambda i, f: ["train", csv(f, "a,b,y\n1,2,x\n3,4,z\n5,n/a?,x\n"), "--target", "y"],
        r"features must be numbers; '.*/bad.csv' has 'n/a\?' at row 4, column 'b'",
    ),
    Case(
        "a row with one field too many",
        lambda i, f: ["score", csv(f, "y,a,b\na,0.5,0.5\nb,0.5,0.5,0\n"), "--target", "y"],
        r"'.*/bad.csv' has 4 fields at row 3, where the header has 3",
    ),
    Case(
        "a missing label (train)",
        lambda i, f: ["train", csv(f, "a,y\n1,x\n3,\n5,z\n7,x\n9,z\n"), "--target", "y"],
        r"'.*/bad.csv', column 'y', has no label at row 3",
    ),
    Case(
        "a missing label (score)",
        lambda i, f: ["score", csv(f, "y,a,b\na,0.5,0.5\n,0.5,0.5\n"), "--target", "y"],
        r"'.*/bad.csv', column 'y', has no label at row 3",
    ),
    Case(
        "decimal labels",
        lambda i, f: ["train", csv(f, "a,y\n1,0.5\n2,1.5\n3,0.5\n4,1.5\n"), "--target", "y"],
        r"'.*/bad.csv', column 'y', must hold integer or text labels; "
        r"it has the decimal number '0.5' at row 2",
    ),
    # settings
    Case(
        "a diverging SGD run",
        lambda i, f: ["train", "--dataset", "iris", "--lr", "1e6", "--out", "OUT"],
        LR_TOO_HIGH,
    ),
    Case(
        "a diverging SGD run on 2 processes",
        lambda i, f: [
            *("train", "--dataset", "iris", "--lr", "1e6", "--nproc", "2", "--out", "OUT")
        ],
        LR_TOO_HIGH,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_with_its_exit_status_and_nothing_is_written(
    capsys: pytest.CaptureFixture[str], inputs: dict[str, Path], tmp_path: Path, case: Case
) -> None:
    argv = [
        str(a).replace("OUT", str(tmp_path / "OUT")) if str(a).startswith("OUT") else str(a)
        for a in case.make(inputs, tmp_path)
    ]
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == case.status, err
    assert len(lines) == 1, err
    assert re.fullmatch(f"crossent {argv[0]}: error: {case.message}.*", lines[0]), lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # nothing written


def test_a_uint64_label_is_exact_from_csv_and_parquet(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """2**64 − 1 is read as text from CSV (pyarrow would infer a float), as uint64 from
    Parquet; both name the class 18446744073709551615, in the model and in the report."""
    monkeypatch.setenv("COLUMNS", "200")  # the report's table on a wide terminal: no folds
    big = 2**64 - 1
    rng = np.random.default_rng(0)
    labels = pa.array(np.where(np.arange(40) % 2, big, 3).astype(np.uint64))
    table = pa.table({"a": rng.normal(size=40), "b": rng.normal(size=40), "y": labels})
    pa_csv.write_csv(table, tmp_path / "u.csv")
    pq.write_table(table, tmp_path / "u.parquet")
    for data in ("u.csv", "u.parquet"):
        out = tmp_path / f"run-{data}"
        assert (
            main(["train", str(tmp_path / data), "--target", "y", *QUICK, "--out", str(out)]) == 0
        )
        assert json.loads((out / "model.json").read_text())["classes"] == ["3", str(big)]
        assert f"│ {big} │" in capsys.readouterr().out  # in the per-class table, whole
        assert (
            main(["predict", str(out), str(tmp_path / data), "-o", str(tmp_path / f"p-{data}.csv")])
            == 0
        )
        predicted = pa_csv.read_csv(
            tmp_path / f"p-{data}.csv",
            convert_options=pa_csv.ConvertOptions(column_types={"y": pa.string()}),
        )
        assert predicted.column("y").to_pylist()[:2] == ["3", str(big)]
        assert predicted.column_names == ["y", "3", str(big)]
