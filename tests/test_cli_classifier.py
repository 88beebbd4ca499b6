"""`crossent train`, `predict` and `score` end to end: the files they write and the numbers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from sklearn import datasets

from crossent.cli import main

QUICK = ["--epochs", "8", "--no-reference"]
RUN_FILES = {
    "model.pt",
    "model.json",
    "metrics.json",
    "predictions.csv",
    "loss.png",
    "reliability.png",
    "per_class.png",
}


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def iris_csv(path: Path, rows: slice = slice(None)) -> Path:
    loaded = datasets.load_iris()
    columns = {name: loaded.data[rows, i] for i, name in enumerate(loaded.feature_names)}
    columns["species"] = np.asarray(loaded.target_names)[loaded.target[rows]]
    pa_csv.write_csv(pa.table(columns), path)
    return path


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's first command: `crossent train` with every default, on digits."""
    folder = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--out", str(folder)]) == 0
    return folder


def test_train_writes_a_complete_run_folder(digits_run: Path) -> None:
    assert {p.name for p in digits_run.iterdir()} == RUN_FILES
    for plot in ("loss.png", "reliability.png", "per_class.png"):
        assert (digits_run / plot).read_bytes().startswith(b"\x89PNG")
    card = json.loads((digits_run / "model.json").read_text())
    assert card["classes"] == [str(d) for d in range(10)]
    assert len(card["feature_names"]) == len(card["mean"]) == len(card["scale"]) == 64
    assert card["options"]["objective"] == "nll"


def test_metrics_nll_is_the_sum_over_the_saved_predictions(digits_run: Path) -> None:
    metrics = json.loads((digits_run / "metrics.json").read_text())
    held_out = metrics["held_out"]
    predictions = pa_csv.read_csv(
        digits_run / "predictions.csv",
        convert_options=pa_csv.ConvertOptions(column_types={"target": pa.string()}),
    )
    classes = metrics["data"]["classes"]
    probs = np.column_stack([predictions.column(c).to_numpy() for c in classes])
    labels = np.array([classes.index(v) for v in predictions.column("target").to_pylist()])
    bits = -np.log2(probs[np.arange(len(labels)), labels])
    assert held_out["examples"] == len(labels) == metrics["data"]["held_out_rows"] == 450
    assert held_out["total_nll_bits"] == pytest.approx(bits.sum(), rel=1e-12)
    assert held_out["mean_nll_bits"] == pytest.approx(bits.mean(), rel=1e-12)
    assert held_out["total_nll_nats"] == pytest.approx(bits.sum() * math.log(2), rel=1e-12)
    assert held_out["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    parts = held_out["uncertainty_bits"] - held_out["resolution_bits"]
    assert parts + held_out["reliability_bits"] == pytest.approx(bits.mean(), rel=1e-12)
    assert held_out["perplexity"] == pytest.approx(2 ** bits.mean())
    assert len(metrics["training"]["train_bits"]) == 100  # the default epochs
    assert metrics["training"]["held_out_bits"][-1] == pytest.approx(bits.mean(), rel=1e-6)


def test_linear_model_is_within_5_percent_of_logistic_regression(digits_run: Path) -> None:
    metrics = json.loads((digits_run / "metrics.json").read_text())
    ours = metrics["held_out"]["mean_nll_bits"]
    reference = metrics["reference"]
    assert reference["C"] == pytest.approx(1 / (1347 * 1e-3))  # the same L2 strength
    assert ours == pytest.approx(reference["mean_nll_bits"], rel=0.05)


def test_train_reports_in_bits_and_nats(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "train", "--dataset", "iris", *QUICK, "--out", tmp_path / "r")
    assert code == 0
    text = " ".join(out.split())
    for phrase in (
        "epoch 8/8",
        "mean NLL",
        "bits",
        "nats",
        "total NLL",
        "H(Y)",
        "perplexity",
        "− resolution",
        "+ reliability",
        "top-label ECE",
        "run folder",
    ):
        assert phrase in text


def test_score_of_the_saved_predictions_equals_the_metrics(
    capsys: pytest.CaptureFixture[str], digits_run: Path, tmp_path: Path
) -> None:
    code, _, _ = run(
        capsys,
        "score",
        digits_run / "predictions.csv",
        "--target",
        "target",
        "--json",
        tmp_path / "score.json",
    )
    assert code == 0
    scored = json.loads((tmp_path / "score.json").read_text())
    held_out = json.loads((digits_run / "metrics.json").read_text())["held_out"]
    for key in ("examples", "accuracy", "total_nll_bits", "resolution_bits", "ece"):
        assert scored[key] == pytest.approx(held_out[key], rel=1e-12)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_then_score(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    data = iris_csv(tmp_path / "iris.csv")
    assert (
        run(capsys, "train", data, "--target", "species", *QUICK, "--out", tmp_path / "r")[0] == 0
    )
    output = tmp_path / f"predictions{suffix}"
    code, out, _ = run(capsys, "predict", tmp_path / "r", data, "-o", output)
    assert code == 0
    assert "wrote 150 rows × 3 classes" in out
    table = pq.read_table(output) if suffix == ".parquet" else pa_csv.read_csv(output)
    assert table.column_names == ["species", "setosa", "versicolor", "virginica"]
    probs = np.column_stack([table.column(c).to_numpy() for c in table.column_names[1:]])
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-12)
    code, out, _ = run(
        capsys, "score", output, "--target", "species", "--json", tmp_path / "s.json"
    )
    assert code == 0
    assert json.loads((tmp_path / "s.json").read_text())["examples"] == 150


def test_predict_without_labels_and_log_prob_layout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = iris_csv(tmp_path / "iris.csv")
    assert (
        run(capsys, "train", data, "--target", "species", *QUICK, "--out", tmp_path / "r")[0] == 0
    )
    features = pa_csv.read_csv(data).drop_columns(["species"])
    pa_csv.write_csv(features, tmp_path / "new.csv")
    code, _, _ = run(
        capsys,
        "predict",
        tmp_path / "r",
        tmp_path / "new.csv",
        "-o",
        tmp_path / "lp.csv",
        "--layout",
        "log-probs",
    )
    assert code == 0
    table = pa_csv.read_csv(tmp_path / "lp.csv")
    assert table.column_names == ["setosa", "versicolor", "virginica"]
    log_probs = np.column_stack([c.to_numpy() for c in table.columns])
    np.testing.assert_allclose(np.exp(log_probs).sum(1), 1, rtol=1e-12)


def test_score_streams_in_blocks_to_the_same_numbers(tmp_path: Path) -> None:
    from crossent.classifier.predictions import score_file

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=3000)
    labels = [str(rng.choice(4, p=p)) for p in probs]
    table = pa.table({"y": labels, **{str(j): probs[:, j] for j in range(4)}})
    pa_csv.write_csv(table, tmp_path / "p.csv")
    blocks: list[int] = []
    streamed = score_file(
        tmp_path / "p.csv",
        "y",
        "probs",
        block_bytes=8192,
        on_bytes=lambda done, total: blocks.append(done),
    )
    whole = score_file(tmp_path / "p.csv", "y", "probs")
    assert len(blocks) > 10
    assert streamed.total_nll_bits == pytest.approx(whole.total_nll_bits, rel=1e-12)
    index = np.array([int(v) for v in labels])
    expected = -np.log2(probs[np.arange(3000), index]).sum()
    assert whole.total_nll_bits == pytest.approx(expected, rel=1e-12)


# ---- bad input: a clear error, exit status 2, nothing half-written ----


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        (
            "a,b,y\n1,2,x\n3,4,z\n",
            ["--target", "label"],
            r"target column \['label'\] not found in '.*'; its columns are \['a', 'b', 'y'\]",
        ),
        ("a,b,y\n1,red,x\n3,blue,z\n", ["--target", "y"], r"has 'red' at row 2, column 'b'"),
        ("a,b,y\n1,2,x\n3,-inf,z\n", ["--target", "y"], r"has -inf at row 3, column 'b'"),
        ("a,b,y\n1,2,x\n3,,z\n", ["--target", "y"], r"feature 'b' has a missing value at row 3"),
        ("a,b,y\n1,2,x\n3,4,x\n", ["--target", "y"], r"at least 2 classes.*only 'x'"),
        ("a,b,y\n1,2,x\n3,4,z\n", [], r"`--target` is required with DATA"),
    ],
)
def test_train_refuses_bad_data_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, args: list[str], message: str
) -> None:
    data = write(tmp_path / "bad.csv", text)
    code, _, err = run(capsys, "train", data, *args, "--out", tmp_path / "run")
    assert code == 2
    assert err.startswith("crossent train: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"bad.csv"}


def test_train_refuses_to_overwrite_a_run_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "r").mkdir()
    code, _, err = run(capsys, "train", "--dataset", "iris", *QUICK, "--out", tmp_path / "r")
    assert code == 2
    assert "already exists; pass --force to replace it, or choose another --out" in err
    code, _, _ = run(
        capsys, "train", "--dataset", "iris", *QUICK, "--out", tmp_path / "r", "--force"
    )
    assert code == 0
    assert {p.name for p in (tmp_path / "r").iterdir()} == RUN_FILES
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temporary folder left


def test_predict_refuses_unknown_labels_and_missing_features(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = iris_csv(tmp_path / "iris.csv")
    assert (
        run(capsys, "train", data, "--target", "species", *QUICK, "--out", tmp_path / "r")[0] == 0
    )
    text = data.read_text().replace("virginica", "rose", 1)
    code, _, err = run(
        capsys,
        "predict",
        tmp_path / "r",
        write(tmp_path / "new.csv", text),
        "-o",
        tmp_path / "out.csv",
    )
    assert code == 2
    assert "has the label 'rose' at row 102, which is not one of the 3 classes" in err
    assert not (tmp_path / "out.csv").exists()
    features = pa_csv.read_csv(data).drop_columns(["petal width (cm)"])
    pa_csv.write_csv(features, tmp_path / "fewer.csv")
    code, _, err = run(
        capsys, "predict", tmp_path / "r", tmp_path / "fewer.csv", "-o", tmp_path / "out.csv"
    )
    assert code == 2
    assert "feature column ['petal width (cm)'] not found" in err
    assert not list(tmp_path.glob("*out.csv*"))


@pytest.mark.parametrize(
    ("rows", "args", "message"),
    [
        (
            "a,0.5,0.5\nb,-0.1,1.1\n",
            [],
            r"predictions must be probabilities in \[0, 1\]; '.*p.csv' has -0.1 at row 3, "
            r"column 'a'",
        ),
        (
            "a,0.5,0.5\nb,0.5,0.4\n",
            [],
            r"must sum to 1 over the 2 class columns .* row 3 of '.*p.csv' sums to 0.9",
        ),
        (
            "a,0.5,0.5\nc,0.5,0.5\n",
            [],
            r"the label 'c' at row 3, which is not one of the 2 classes",
        ),
        ("a,0.5,0.5\nb,0.5,\n", [], r"class column 'b' has a missing value at row 3"),
        (
            "a,-0.7,-0.7\nb,0.1,-3\n",
            ["--layout", "log-probs"],
            r"must be log-probabilities, ≤ 0; '.*p.csv' has 0.1 at row 3, column 'a'",
        ),
        ("a,-0.7,-0.7\n", ["--layout", "log-probs"], r"row 2 of '.*p.csv' sums to 0.99317"),
        ("a,0.5,0.5\n", ["--classes", "a,c"], r"column \['c'\] not found"),
    ],
)
def test_score_refuses_bad_predictions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, rows: str, args: list[str], message: str
) -> None:
    path = write(tmp_path / "p.csv", "label,a,b\n" + rows)
    code, _, err = run(
        capsys, "score", path, "--target", "label", *args, "--json", tmp_path / "s.json"
    )
    assert code == 2
    assert re.search(message, err), err
    assert not (tmp_path / "s.json").exists()


def test_score_names_a_missing_target(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "y,a,b\na,0.5,0.5\n")
    code, _, err = run(capsys, "score", path, "--target", "label")
    assert code == 2
    assert "target column ['label'] not found" in err
    assert "its columns are ['y', 'a', 'b']" in err


@pytest.mark.parametrize(
    ("bins", "expected"),
    [("1", 0.0375), ("4", 0.3875), ("10", 0.4375)],
)
def test_score_bins_group_the_confidences_as_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bins: str, expected: float
) -> None:
    """Top-label confidences 0.9, 0.8, 0.6, 0.55, the second forecast wrong. ECE =
    Σ_b (n_b / N) |accuracy_b − confidence_b|, by hand: one bin |0.75 − 0.7125| = 0.0375;
    four bins 0.5 · |1 − 0.575| + 0.5 · |0.5 − 0.85| = 0.3875; ten bins 0.25 · (0.45 + 0.4
    + 0.8 + 0.1) = 0.4375."""
    path = write(tmp_path / "p.csv", "label,a,b\na,0.9,0.1\nb,0.8,0.2\na,0.6,0.4\na,0.55,0.45\n")
    code, _, err = run(
        capsys, "score", path, "--target", "label", "--bins", bins, "--json", tmp_path / "s.json"
    )
    assert code == 0, err
    scored = json.loads((tmp_path / "s.json").read_text())
    assert scored["ece"] == pytest.approx(expected, abs=1e-12)
    assert len(scored["confidence_bins"]) == int(bins)
