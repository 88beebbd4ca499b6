"""The command line, end to end: `crossent explain`, --help, --version, and its errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import crossent
from crossent.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_walks_through_the_articles_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain")
    assert code == 0
    assert re.search(r"a\s*│\s*0.5\s*│\s*0\s*│\s*1\s*│", out)  # outcome a: code word 0
    assert re.search(r"b\s*│\s*0.25\s*│\s*10\s*│\s*2\s*│", out)
    assert re.search(r"c\s*│\s*0.25\s*│\s*11\s*│\s*2\s*│", out)
    text = " ".join(out.split())
    assert "H(q) = Σ q(x) log2 1/q(x) = 1.5000 bits" in text
    assert "H(p, q) = −Σ p log2 q = 1.8750 bits, but H(q, p) = 2.3538 bits" in text
    assert "D(p ‖ q) = Σ p log2 p/q = 0.8137 bits = H(p, q) − H(p) = 0.8137" in text
    assert "= H(y, q)" in text
    assert "the sum of the per-example cross entropies" in text


def test_explain_with_the_users_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "explain", "--p", "0.2 0.3 0.5", "--q", "1/3,1/3,1/3", "--batch", "3"
    )
    assert code == 0
    text = " ".join(out.split())
    assert "H(q) = Σ q(x) log2 1/q(x) = 1.5850 bits" in text  # log2 3
    assert "A batch of 3" in text


def test_explain_batch_total_is_the_sum_of_the_rows(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "explain", "--batch", "4", "--seed", "7")
    rows = re.findall(r"│\s*\d+\s*│\s*[a-c]\s*│.*│\s*([\d.]+)\s*│", out)
    total = float(re.search(r"= ([\d.]+) bits \(total", " ".join(out.split())).group(1))
    assert len(rows) == 4
    assert total == pytest.approx(sum(map(float, rows)), abs=2e-4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--p", "0.2,0.3,0.6"],
            r"`--p` must sum to 1 \(within 3.5e-04 for float64\); it sums to 1.1",
        ),
        (
            ["--q", "0.5,-0.5,1"],
            r"`--q` must be probabilities in \[0, 1\]; got -0.5 at position \(1,\)",
        ),
        (["--p", "1/2,1/2"], r"`--p` and `--q` must give one probability per outcome; got 2 and 3"),
        (["--p", "a,b"], r"`--p` must list numbers or fractions such as 1/2,1/4,1/4; got 'a,b'"),
        (["--batch", "0"], r"`--batch` must be at least 1; got 0"),
        (["--seed", "-1"], r"`--seed` must be a non-negative integer; got -1"),
        (["--p", "1e400,0,0"], r"`--p` must list numbers or fractions"),
    ],
)
def test_explain_rejects_bad_input(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "explain", *argv)
    assert code == 2
    assert out == ""
    assert re.search(r"^crossent explain: error: " + message, err)


def test_console_script_help_and_version() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "crossent", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"crossent {crossent.__version__}"
    helped = subprocess.run(
        [sys.executable, "-m", "crossent", "--help"], capture_output=True, text=True, check=True
    )
    assert "explain" in helped.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # Dyadic q: the code's mean length is H(q) exactly, whatever the float rounding.
        (["--q", "1/2,1/4,1/8,1/16,1/32,1/32", "--p", "1/6,1/6,1/6,1/6,1/6,1/6"], "exactly H(q)"),
        (["--q", "0.3,0.3,0.4", "--p", "0.3,0.3,0.4"], "within one question of H(q)"),
        (["--p", "1/2,1/2", "--q", "1/2,1/2"], "equal for these two, but not in general"),
        # q sums to 1 + 1.2e-4, within the tolerance: normalised, so its code still exists.
        (["--q", "1/2,1/4,1/4,1/8192", "--p", "1/4,1/4,1/4,1/4"], "H(p, q) = −Σ p log2 q"),
        (["--p", "1/2,1/2", "--q", "1e-320,1"], "D(p ‖ q) = Σ p log2 p/q = 530.5085 bits"),
    ],
)
def test_explain_text_fits_the_numbers(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, out, err = run(capsys, "explain", *argv)
    assert (code, err) == (0, "")
    assert expected in " ".join(out.split())
