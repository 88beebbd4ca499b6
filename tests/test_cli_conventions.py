"""The command line's conventions: `-` for standard input and output, `--quiet`, `--json` for
every command that reports numbers, and shell completion generated from the parser."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from sklearn import datasets

import crossent
from crossent.cli import build_parser, main

CROSSENT = [sys.executable, "-m", "crossent"]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run folder trained on iris (label column `species`), and the iris table as CSV."""
    folder = tmp_path_factory.mktemp("iris")
    loaded = datasets.load_iris()
    columns = {name: loaded.data[:, i] for i, name in enumerate(loaded.feature_names)}
    columns["species"] = np.asarray(loaded.target_names)[loaded.target]
    data = folder / "iris.csv"
    pa_csv.write_csv(pa.table(columns), data)
    args = ["train", data, "--target", "species", "--epochs", "5", "--no-reference", "-q"]
    assert main([str(a) for a in [*args, "--out", folder / "run"]]) == 0
    return folder / "run", data


# ---- `-`: standard input and standard output ----


def test_predict_writes_csv_to_stdout_and_its_report_to_stderr(
    capsys: pytest.CaptureFixture[str], iris: tuple[Path, Path], tmp_path: Path
) -> None:
    run_folder, data = iris
    assert run(capsys, "predict", run_folder, data, "-o", tmp_path / "p.csv")[0] == 0
    code, out, err = run(capsys, "predict", run_folder, data, "-o", "-")
    assert code == 0
    assert out == (tmp_path / "p.csv").read_text()  # the same table as the file
    assert out.startswith('"species","setosa","versicolor","virginica"')
    assert "wrote 150 rows × 3 classes (probs) to standard output" in err
    assert not Path("-").exists()


def test_predict_reads_features_from_stdin(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    iris: tuple[Path, Path],
) -> None:
    run_folder, data = iris
    expected = run(capsys, "predict", run_folder, data, "-o", "-")[1]
    feed_stdin(monkeypatch, data.read_bytes())
    code, out, _ = run(capsys, "predict", run_folder, "-", "-o", "-")
    assert code == 0
    assert out == expected


def test_score_reads_stdin_and_writes_json_to_stdout(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    iris: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """The issue's `score --json -` wrote a file named `-`; now the JSON is standard output."""
    run_folder, _ = iris
    predictions = run_folder / "predictions.csv"
    report = tmp_path / "r.json"
    assert run(capsys, "score", predictions, "--target", "species", "--json", report)[0] == 0
    feed_stdin(monkeypatch, predictions.read_bytes())
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "score", "-", "--target", "species", "--json", "-")
    assert code == 0
    assert json.loads(out) == json.loads(report.read_text())
    assert "mean NLL" in err  # the report for a person, on stderr
    assert not (tmp_path / "-").exists()


def test_an_error_on_stdin_names_standard_input_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    feed_stdin(monkeypatch, b"label,a,b\na,0.5,0.5\nb,0.7,0.6\n")
    code, out, err = run(capsys, "score", "-", "--target", "label", "--json", "-")
    assert code == 2
    assert out == ""  # no half of a report on stdout
    assert err.strip().splitlines() == [
        "crossent score: error: predictions must sum to 1 over the 2 class columns "
        "(within 3.5e-04); row 3 of '-' (standard input) sums to 1.3"
    ]


def test_decompress_writes_labels_to_stdout(
    capsys: pytest.CaptureFixture[str], iris: tuple[Path, Path], tmp_path: Path
) -> None:
    run_folder, data = iris
    packed = tmp_path / "labels.xent"
    assert run(capsys, "compress", run_folder, data, "--target", "species", "-o", packed)[0] == 0
    code, out, err = run(capsys, "decompress", run_folder, data, packed, "-o", "-")
    assert code == 0
    loaded = datasets.load_iris()
    assert out.split() == ['"species"', *[f'"{n}"' for n in loaded.target_names[loaded.target]]]
    assert "decoded 150 labels into standard output" in err


def test_compress_to_stdout_is_the_same_file(
    capsysbinary: pytest.CaptureFixture[bytes], iris: tuple[Path, Path], tmp_path: Path
) -> None:
    run_folder, data = iris
    args = ["compress", str(run_folder), str(data), "--target", "species", "-q", "-o"]
    assert main([*args, str(tmp_path / "a.xent")]) == 0
    assert main([*args, "-"]) == 0
    assert capsysbinary.readouterr().out == (tmp_path / "a.xent").read_bytes()


def test_one_stdout_at_a_time(capsys: pytest.CaptureFixture[str], iris: tuple[Path, Path]) -> None:
    run_folder, data = iris
    argv = ["compress", run_folder, data, "--target", "species", "-o", "-", "--json", "-"]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert "--output and --json are both - (standard output); give one of them a file" in err


def test_a_pipe_between_two_commands_and_a_closed_reader(
    iris: tuple[Path, Path], tmp_path: Path
) -> None:
    """`predict … -o - | score -` in real processes; a reader that closes the pipe early
    (`| head -c 10`) ends predict with one line and status 1, no traceback."""
    run_folder, data = iris
    predict = [*CROSSENT, "predict", str(run_folder), str(data), "-o", "-", "-q"]
    score = [*CROSSENT, "score", "-", "--target", "species", "--json", "-", "-q"]
    with subprocess.Popen(predict, stdout=subprocess.PIPE) as first:
        second = subprocess.run(score, stdin=first.stdout, capture_output=True, check=False)
    assert (first.returncode, second.returncode, second.stderr) == (0, 0, b"")
    assert json.loads(second.stdout)["examples"] == 150

    big = tmp_path / "big.csv"
    lines = data.read_text().splitlines(keepends=True)
    big.write_text(lines[0] + "".join(lines[1:]) * 200)  # 30,000 rows: more than a pipe holds
    predict[predict.index(str(data))] = str(big)
    with subprocess.Popen(predict, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as first:
        assert first.stdout is not None
        first.stdout.read(10)
        first.stdout.close()
        first.wait(timeout=120)
        assert first.stderr is not None
        err = first.stderr.read().decode()
    assert first.returncode == 1
    assert err == (
        "crossent predict: error: standard output was closed before all of the output was written\n"
    )


# ---- --json for every command that reports numbers ----


def test_explain_json_holds_the_numbers_it_prints(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "--code", "--json", "-")
    assert code == 0
    numbers = json.loads(out)
    assert numbers["unit"] == "bits"
    assert numbers["entropy"]["H(q)"] == 1.5
    assert numbers["cross_entropy"]["H(p, q)"] == 1.875
    assert numbers["kl_divergence"]["D(p || q)"] == pytest.approx(0.8137, abs=1e-4)
    assert numbers["entropy"]["code_words"] == ["0", "10", "11"]
    batch = numbers["batch"]
    assert math.isclose(batch["nll_sum"], math.fsum(batch["nll_per_example"]))
    assert numbers["questions"]["code_words_of_q"] == ["0", "10", "11"]
    assert "H(q) = Σ q(x) log2 1/q(x) = 1.5000 bits" in " ".join(err.split())


def test_train_json_is_the_run_folders_metrics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_json = tmp_path / "summary.json"
    argv = ["train", "--dataset", "iris", "--epochs", "3", "--no-reference", "-q"]
    code, out, err = run(capsys, *argv, "--out", tmp_path / "run", "--json", out_json)
    assert (code, out, err) == (0, "", "")  # --quiet: nothing but errors
    summary = json.loads(out_json.read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["run_folder"] == str(tmp_path / "run")
    assert summary["held_out"] == metrics["held_out"]
    assert summary["training"] == metrics["training"]


def test_compress_json_has_the_sizes_of_the_report(
    capsys: pytest.CaptureFixture[str], iris: tuple[Path, Path], tmp_path: Path
) -> None:
    run_folder, data = iris
    packed = tmp_path / "l.xent"
    argv = ["compress", run_folder, data, "--target", "species", "-o", packed, "--json", "-"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    sizes = json.loads(out)
    assert sizes["labels"] == 150
    assert sizes["file_bytes"] == packed.stat().st_size
    assert sizes["file_bits"] == 8 * sizes["file_bytes"]
    assert sizes["overhead_bits"] == sizes["compressed_bits"] - sizes["quantised_nll_bits"]
    assert sizes["nll_bits"] < sizes["label_entropy_bits"]  # the model knows something


def test_json_output_follows_the_rules_of_every_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    taken = tmp_path / "notes.json"
    taken.write_text("my notes\n")
    code, _, err = run(capsys, "explain", "--json", taken)
    assert code == 2
    assert "already exists; pass --force to replace it, or choose another --json" in err
    code, _, err = run(capsys, "explain", "--json", taken, "--force")
    assert code == 2
    assert "is not a JSON report; --force replaces only what crossent wrote" in err
    assert taken.read_text() == "my notes\n"
    report = tmp_path / "report.json"
    assert run(capsys, "explain", "--json", report, "-q")[0] == 0
    assert run(capsys, "explain", "--json", report, "--p", "1/3,1/3,1/3", "--force", "-q")[0] == 0
    assert json.loads(report.read_text())["p"] == pytest.approx([1 / 3] * 3)


# ---- --quiet ----


@pytest.mark.parametrize(
    "argv",
    [
        ["explain"],
        ["explain", "--code"],
        ["predict", "{run}", "{data}", "-o", "{tmp}/p.csv"],
        ["score", "{run}/predictions.csv", "--target", "species"],
        ["compress", "{run}", "{data}", "--target", "species", "-o", "{tmp}/l.xent"],
    ],
    ids=lambda argv: argv[0] + ("-code" if "--code" in argv else ""),
)
def test_quiet_prints_nothing_but_errors(
    capsys: pytest.CaptureFixture[str], iris: tuple[Path, Path], tmp_path: Path, argv: list[str]
) -> None:
    run_folder, data = iris
    filled = [a.format(run=run_folder, data=data, tmp=tmp_path) for a in argv]
    loud = run(capsys, *filled)
    for path in tmp_path.iterdir():
        path.unlink()
    assert loud[0] == 0
    assert loud[1]  # it has something to say without --quiet
    assert run(capsys, *filled, "--quiet") == (0, "", "")


def test_quiet_still_reports_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "--p", "0.5,0.6", "--q", "1/2,1/2", "--quiet")
    assert (code, out) == (2, "")
    assert err.startswith("crossent explain: error: ")
    assert err.count("\n") == 1


def _leaf_commands(
    parser: argparse.ArgumentParser, name: str = "crossent"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) of every command that runs: ``text score``, not ``text``."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield name, parser
    for group in groups:
        for sub, command in group.choices.items():
            yield from _leaf_commands(command, f"{name} {sub}")


def test_every_command_takes_quiet() -> None:
    commands = dict(_leaf_commands(build_parser()))
    assert set(commands) >= {
        f"crossent {name}"
        for name in ("explain", "train", "predict", "score", "compress", "decompress")
    } | {f"crossent text {name}" for name in ("score", "compress", "decompress", "train")}
    for name, command in commands.items():
        options = {o for a in command._actions for o in a.option_strings}
        assert {"-q", "--quiet"} <= options, name


# ---- shell completion ----


def test_completion_script_for_bash_completes_commands_options_and_folders(
    tmp_path: Path,
) -> None:
    script = tmp_path / "crossent.bash"
    printed = subprocess.run(
        [*CROSSENT, "--print-completion", "bash"], capture_output=True, check=True, text=True
    )
    script.write_text(printed.stdout)
    (tmp_path / "runs-a").mkdir()
    (tmp_path / "runs-a.txt").write_text("")
    answers = _complete_in_bash(
        script,
        tmp_path,
        ["crossent tr", "crossent score --js", "crossent predict runs-", "crossent explain --q"],
    )
    assert answers == ["train", "--json", "runs-a", "--q --quiet"]


def _complete_in_bash(script: Path, folder: Path, lines: list[str]) -> list[str]:
    """What bash offers for the last word of each line, with the script sourced."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    body = [f"source {script}"]
    for line in lines:
        words = line.split()
        body += [
            f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}",
            f"COMP_LINE='{line}'; COMP_POINT={len(line)}",
            '_shtab_crossent; echo "${COMPREPLY[*]}"',
        ]
    done = subprocess.run(
        [bash, "-c", "\n".join(body)], cwd=folder, capture_output=True, check=True, text=True
    )
    return [" ".join(sorted(answer.split())) for answer in done.stdout.splitlines()]


@pytest.mark.parametrize(("shell", "mark"), [("zsh", "#compdef crossent"), ("tcsh", "complete")])
def test_completion_scripts_for_zsh_and_tcsh(
    capsys: pytest.CaptureFixture[str], shell: str, mark: str
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--print-completion", shell])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert mark in out
    for word in ("train", "decompress", "quiet", "json"):  # tcsh lists options without --
        assert word in out


def test_completion_without_shtab_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "shtab.py").write_text("raise ModuleNotFoundError(name='shtab')\n")
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [*CROSSENT, "--print-completion", "bash"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "crossent: error: crossent --print-completion needs shtab, which is not installed: "
        "pip install 'crossent[completion]'\n"
    )
    assert crossent.__version__  # the package itself imports without shtab
