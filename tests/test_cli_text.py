"""`crossent text score`, `compress`, `decompress` and `train`, end to end, and their errors."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crossent.cli import main
from crossent.text import yardsticks
from tests.test_text import STDLIB, UNICODE, corpus_bytes, make_gpt2

SHAPE = ["--orders", "1,2,3", "--bucket-bits", "10", "--matches", "3,6", "--width", "4",
         "--hidden", "16", "--lookback", "4096"]  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte model trained by the command on a folder of two .py files (and a skipped one)."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "a.py").write_bytes(corpus_bytes()[:30_000])
    (folder / "b.py").write_bytes((STDLIB / "typing.py").read_bytes()[:20_000])
    (folder / "c.py").write_bytes(b"\x00binary")
    (folder / "notes.txt").write_text("not included")
    out = tmp_path_factory.mktemp("models") / "byte"
    code = main(["text", "train", str(folder), "--include", "*.py", "--held-out", "0.5",
                 "--steps", "30", "--batch-size", "256", "--out", str(out), *SHAPE])  # fmt: skip
    assert code == 0
    return out


def test_train_writes_a_model_folder_with_its_history(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    assert sorted(p.name for p in model.iterdir()) == [
        "crossent-text-model.json",
        "history.json",
        "weights.npz",
    ]
    card = json.loads((model / "crossent-text-model.json").read_text())
    assert card["training"]["steps"] == 30
    assert card["training"]["train_bytes"] == 30_000  # a.py; b.py held out, c.py skipped
    assert card["training"]["held_out_bytes"] == 20_000
    history = json.loads((model / "history.json").read_text())
    assert history[-1]["step"] == 30
    assert 0 < history[-1]["held_out_bits_per_byte"] < 8
    code, _, err = run(capsys, "text", "train", tmp_path, "--out", model, "--steps", "1")
    assert code == 2
    assert "already exists; pass --force" in err


def test_score_reports_bits_beside_the_compressors(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    text = tmp_path / "t.txt"
    text.write_text(UNICODE * 4)
    outputs = ["--json", tmp_path / "s.json", "--html", tmp_path / "s.html"]
    code, out, _ = run(capsys, "text", "score", text, "--model", model, *outputs)
    assert code == 0
    for row in ("the model", "gzip -9", "bzip2 -9", "xz -9", "zstd -19"):
        assert row in out
    figures = json.loads((tmp_path / "s.json").read_text())
    assert figures["bytes"] == len((UNICODE * 4).encode()) == figures["tokens"]
    assert figures["characters"] == len(UNICODE * 4)
    assert figures["bits_per_byte"] == pytest.approx(figures["total_bits"] / figures["bytes"])
    assert figures["compressors"]["xz -9"]["bytes"] > 0
    page = (tmp_path / "s.html").read_text()
    assert 'content="crossent text score"' in page
    assert "日" in page
    titles = [float(b) for b in re.findall(r'title="([\d.]+) bits"', page)]
    assert len(titles) == figures["characters"]  # one piece per character: bytes merged
    assert sum(titles) == pytest.approx(figures["total_bits"], abs=0.01 * len(titles))
    code, _, _ = run(capsys, "text", "score", text, "--model", model, "--base", "e",
                     "--json", tmp_path / "s.json", "--force", "--no-compressors")  # fmt: skip
    nats = json.loads((tmp_path / "s.json").read_text())
    assert code == 0
    assert nats["unit"] == "nats"
    assert nats["compressors"] == {}
    assert nats["total_nats"] == pytest.approx(figures["total_bits"] * math.log(2))


def test_compress_then_decompress_gives_the_bytes_back(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    for name, data in (
        ("ascii", corpus_bytes()[:3000]),
        ("utf8", UNICODE.encode()),
        ("one", b"\n"),
    ):
        source, packed, back = tmp_path / name, tmp_path / f"{name}.xent", tmp_path / f"{name}.out"
        source.write_bytes(data)
        code, out, _ = run(capsys, "text", "compress", source, "--model", model, "-o", packed)
        assert code == 0
        assert "compressed (payload)" in out
        assert "bound on the payload" in out
        code, out, _ = run(capsys, "text", "decompress", packed, "--model", model, "-o", back)
        assert code == 0
        assert f"decoded {len(data):,} bytes" in out
        assert back.read_bytes() == data
    # - writes the bytes, and only them, to standard output; the report goes to stderr
    done = subprocess.run(
        [sys.executable, "-m", "crossent", "text", "decompress", str(packed), "--model",
         str(model), "-o", "-"],
        capture_output=True, check=True,
    )  # fmt: skip
    assert done.stdout == data
    assert b"decoded 1 bytes into standard output" in done.stderr
    code, _, err = run(capsys, "text", "compress", source, "--model", model, "-o", packed)
    assert code == 2
    assert "already exists; pass --force" in err
    code, _, _ = run(capsys, "text", "compress", source, "--model", model, "-o", packed, "--force")
    assert code == 0


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"\x7fELF\x02\x01\x01\x00", "is a binary file, not text"),
        ("café".encode("latin-1"), "is not UTF-8 text: byte 0xe9"),
    ],
    ids=["empty", "binary", "latin-1"],
)
@pytest.mark.parametrize("command", ["score", "compress"])
def test_bad_text_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    model: Path,
    tmp_path: Path,
    data: bytes,
    message: str,
    command: str,
) -> None:
    (tmp_path / "bad").write_bytes(data)
    extra = ["-o", tmp_path / "o.xent"] if command == "compress" else []
    err = _one_line_error(capsys, "text", command, tmp_path / "bad", "--model", model, *extra)
    assert f"crossent text {command}: error: '{tmp_path / 'bad'}' {message}" in err
    assert not (tmp_path / "o.xent").exists()


def test_bad_models_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    text = tmp_path / "t.txt"
    text.write_text("hello world\n")
    (tmp_path / "empty").mkdir()
    err = _one_line_error(capsys, "text", "score", text, "--model", tmp_path / "empty")
    assert "is not a model folder: it has neither crossent-text-model.json" in err
    transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                           intermediate_size=8).save_pretrained(tmp_path / "vit")  # fmt: skip
    err = _one_line_error(capsys, "text", "score", text, "--model", tmp_path / "vit")
    assert "holds a 'vit' model, which is not a causal language model" in err
    err = _one_line_error(capsys, "text", "score", text, "--model", model, "--stride", "4")
    assert "`--stride` is for Hugging Face models" in err
    err = _one_line_error(capsys, "text", "score", text, "--model", tmp_path / "missing")
    assert "No such file or directory" in err


def test_a_text_the_tokenizer_cannot_give_back_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    make_gpt2(tmp_path / "m")
    words = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "m" / "tokenizer.json").unlink()
    transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(
        tmp_path / "m"
    )
    (tmp_path / "t.txt").write_text("hello wörld")
    capsys.readouterr()  # what saving the model printed
    err = _one_line_error(capsys, "text", "score", tmp_path / "t.txt", "--model", tmp_path / "m",
                          "--device", "cpu")  # fmt: skip
    assert "does not survive the tokenizer of" in err
    assert "at character 6" in err


def test_decompress_refuses_damage_and_another_model(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    (tmp_path / "t.txt").write_bytes(corpus_bytes()[:500])
    assert main(["text", "compress", str(tmp_path / "t.txt"), "--model", str(model), "-o",
                 str(tmp_path / "t.xent")]) == 0  # fmt: skip
    capsys.readouterr()
    data = bytearray((tmp_path / "t.xent").read_bytes())
    data[-40] ^= 1
    (tmp_path / "flipped.xent").write_bytes(bytes(data))
    err = _one_line_error(capsys, "text", "decompress", tmp_path / "flipped.xent", "--model",
                          model, "-o", tmp_path / "out")  # fmt: skip
    assert "is damaged: its SHA-256 checksum does not match" in err
    (tmp_path / "cut.xent").write_bytes(bytes(data[:100]))
    err = _one_line_error(capsys, "text", "decompress", tmp_path / "cut.xent", "--model", model,
                          "-o", tmp_path / "out")  # fmt: skip
    assert "is damaged" in err
    err = _one_line_error(capsys, "text", "decompress", tmp_path / "t.xent", "--model", model,
                          "--context", "99", "-o", tmp_path / "out")  # fmt: skip
    assert "was compressed with --context 4096; decoding it with --context 99" in err
    assert not (tmp_path / "out").exists()


def test_without_zstandard_the_zstd_row_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(data: bytes) -> bytes:
        raise ModuleNotFoundError("No module named 'zstandard'", name="zstandard")

    table = [(n, missing if n == "zstd -19" else f) for n, f in yardsticks._COMPRESSORS]
    monkeypatch.setattr(yardsticks, "_COMPRESSORS", table)
    found = {y.name: y for y in yardsticks.yardsticks(b"some text " * 50)}
    assert found["zstd -19"].compressed_bytes is None
    assert "zstandard is not installed: pip install 'crossent[text]'" in found["zstd -19"].note
    assert found["xz -9"].bits_per_byte(500) == 8 * found["xz -9"].compressed_bytes / 500


def test_without_the_text_extra_the_commands_name_it(model: Path, tmp_path: Path) -> None:
    from tests.test_packaging import missing, without

    (tmp_path / "t.txt").write_text("some text\n")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "gpt2"}')
    text, xent = str(tmp_path / "t.txt"), str(tmp_path / "t.xent")
    calls = [
        ["text", "compress", text, "--model", str(model), "-o", xent],
        ["text", "score", text, "--model", str(tmp_path / "hf")],
        ["text", "score", text, "--model", str(model), "--json", str(tmp_path / "s.json")],
    ]
    blocked = ["constriction", "transformers", "zstandard"]
    compress, hf, scored = without(blocked, calls)
    assert compress == [2, "", missing("text compress", "constriction", "text")]
    assert hf == [2, "", missing("text score", "transformers", "text")]
    assert scored[0] == 0  # the byte model needs none of them; zstd's row says why it is empty
    figures = json.loads((tmp_path / "s.json").read_text())
    assert figures["compressors"]["zstd -19"]["bytes"] is None
    assert "zstandard is not installed" in figures["compressors"]["zstd -19"]["note"]
    assert not (tmp_path / "t.xent").exists()
