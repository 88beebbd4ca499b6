"""`crossent compress`, `decompress` and `explain --code`, end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from sklearn import datasets

from crossent.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run folder trained on wine, and the wine table as CSV."""
    folder = tmp_path_factory.mktemp("wine")
    loaded = datasets.load_wine()
    columns = {name: loaded.data[:, i] for i, name in enumerate(loaded.feature_names)}
    columns["cultivar"] = np.asarray(loaded.target_names)[loaded.target]
    data = folder / "wine.csv"
    pa_csv.write_csv(pa.table(columns), data)
    args = ["train", str(data), "--target", "cultivar", "--epochs", "20", "--no-reference"]
    assert main([*args, "--out", str(folder / "run")]) == 0
    return folder / "run", data


def test_compress_then_decompress_gives_the_labels_back(
    capsys: pytest.CaptureFixture[str], wine: tuple[Path, Path], tmp_path: Path
) -> None:
    run_folder, data = wine
    packed = tmp_path / "l.xent"
    argv = ["compress", run_folder, data, "--target", "cultivar", "-o", packed]
    code, out, _ = run(capsys, *argv, "--json", tmp_path / "c.json")
    assert code == 0
    report = json.loads((tmp_path / "c.json").read_text())
    # every figure of the report, against what it says it is, computed here by hand
    labels = pa_csv.read_csv(data).column("cultivar").to_pylist()
    counts = np.unique(labels, return_counts=True)[1]
    entropy_bits = -float(np.sum(counts * np.log2(counts / len(labels))))
    assert (report["labels"], report["classes"]) == (178, 3)
    assert report["label_entropy_bits"] == pytest.approx(entropy_bits, rel=1e-12)
    assert report["file_bits"] == 8 * report["file_bytes"] == 8 * packed.stat().st_size
    assert report["compressed_bits"] % 32 == 0  # the coder writes 32-bit words
    assert report["overhead_bits"] == pytest.approx(
        report["compressed_bits"] - report["quantised_nll_bits"], rel=1e-12
    )
    assert report["saved_bits"] == pytest.approx(
        entropy_bits - report["compressed_bits"], rel=1e-12
    )
    assert report["quantised_nll_bits"] == pytest.approx(report["nll_bits"], abs=1e-3)
    assert report["nll_bits"] <= report["compressed_bits"] <= report["nll_bits"] + 64 + 1e-3 * 178
    # the printed table shows the same numbers, per label too
    text = " ".join(out.split())
    assert "178 labels of 3 classes" in text
    for row, key in (
        ("NLL of the model", "nll_bits"),
        ("compressed (payload)", "compressed_bits"),
        ("without the features", "label_entropy_bits"),
        ("saved by the model", "saved_bits"),
    ):
        bits = report[key]
        assert f"{row} │ {bits:,.1f} │ {bits / 178:.4f}" in text, row
    code, out, _ = run(capsys, "decompress", run_folder, data, packed, "-o", tmp_path / "back.csv")
    assert code == 0
    assert "decoded 178 labels" in out
    assert pa_csv.read_csv(tmp_path / "back.csv").column("cultivar").to_pylist() == labels


def test_compressed_size_is_the_nll_in_bits(
    capsys: pytest.CaptureFixture[str], wine: tuple[Path, Path], tmp_path: Path
) -> None:
    run_folder, data = wine
    # the score of the model's own predictions gives the same total NLL as the compress report
    run(capsys, "predict", run_folder, data, "-o", tmp_path / "p.csv")
    run(capsys, "score", tmp_path / "p.csv", "--target", "cultivar", "--json", tmp_path / "s.json")
    total = json.loads((tmp_path / "s.json").read_text())["total_nll_bits"]
    _, out, _ = run(
        capsys, "compress", run_folder, data, "--target", "cultivar", "-o", tmp_path / "again.xent"
    )
    nll = float(re.search(r"NLL of the model\s*│\s*([\d,.]+)", out).group(1).replace(",", ""))
    payload = float(
        re.search(r"compressed \(payload\)\s*│\s*([\d,.]+)", out).group(1).replace(",", "")
    )
    assert nll == pytest.approx(total, rel=1e-3, abs=0.1)  # float32 model vs exact float64
    assert payload <= nll + 64 + 1e-3 * 178


def test_other_features_are_an_error_not_wrong_labels(
    capsys: pytest.CaptureFixture[str], wine: tuple[Path, Path], tmp_path: Path
) -> None:
    run_folder, data = wine
    run(capsys, "compress", run_folder, data, "--target", "cultivar", "-o", tmp_path / "l.xent")
    table = pa_csv.read_csv(data)
    changed = table.set_column(0, "alcohol", pa.array(table.column("alcohol").to_numpy() + 0.01))
    pa_csv.write_csv(changed, tmp_path / "changed.csv")
    code, _, err = run(
        capsys,
        "decompress",
        run_folder,
        tmp_path / "changed.csv",
        tmp_path / "l.xent",
        "-o",
        tmp_path / "back.csv",
    )
    assert code == 2
    assert "was compressed with a different features" in err
    assert not (tmp_path / "back.csv").exists()


def test_a_damaged_file_is_an_error(
    capsys: pytest.CaptureFixture[str], wine: tuple[Path, Path], tmp_path: Path
) -> None:
    run_folder, data = wine
    run(capsys, "compress", run_folder, data, "--target", "cultivar", "-o", tmp_path / "l.xent")
    damaged = bytearray((tmp_path / "l.xent").read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    (tmp_path / "l.xent").write_bytes(bytes(damaged))
    code, _, err = run(
        capsys, "decompress", run_folder, data, tmp_path / "l.xent", "-o", tmp_path / "back.csv"
    )
    assert code == 2
    assert "is damaged" in err


def test_compress_names_a_missing_target(
    capsys: pytest.CaptureFixture[str], wine: tuple[Path, Path], tmp_path: Path
) -> None:
    run_folder, data = wine
    code, _, err = run(
        capsys, "compress", run_folder, data, "--target", "kind", "-o", tmp_path / "l.xent"
    )
    assert code == 2
    assert "target column ['kind'] not found" in err
    assert not (tmp_path / "l.xent").exists()


def test_explain_code_plays_twenty_questions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--code", "--games", "20000")
    assert code == 0
    text = " ".join(out.split())
    assert "one of {b, c}? yes; c? no" in text  # b = '10'
    assert "L = 1.5000 questions" in text
    assert "H(q) = 1.5000" in text
    assert "exactly L = H(p) + D(p ‖ 2^-l) = 1.0613 + 0.8137 = 1.8750" in text
    assert "H(p, q) = 1.8750" in text
    measured = float(re.search(r"asked q's questions: ([\d.]+) questions each", text).group(1))
    assert measured == pytest.approx(1.875, abs=0.03)


def test_explain_code_with_an_impossible_outcome(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["explain", "--code", "--q", "1/2,1/2,0", "--p", "1/3,1/3,1/3"]
    code, out, _ = run(capsys, *argv, "--json", tmp_path / "e.json")
    assert code == 0
    assert "never asked: q(x) = 0" in out
    found = json.loads((tmp_path / "e.json").read_text())
    # q's code has no word for c; p draws c a third of the time, so coding p with q's code
    # costs +inf bits, as H(p, q) and D(p ‖ q) say; the other way is finite: H(q, p) = log2 3
    assert found["entropy"]["code_words"][2] is None
    assert found["entropy"]["code_lengths"] == [1, 1, None]
    assert found["entropy"]["H(q)"] == found["entropy"]["mean_length"] == 1.0
    assert found["cross_entropy"]["H(p, q)"] == math.inf
    assert found["cross_entropy"]["mean_length_on_p"] == math.inf
    assert found["kl_divergence"]["D(p || q)"] == math.inf
    assert found["cross_entropy"]["H(q, p)"] == pytest.approx(math.log2(3), rel=1e-12)
    assert found["cross_entropy"]["H(p)"] == pytest.approx(math.log2(3), rel=1e-12)
