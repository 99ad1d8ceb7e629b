"""Bad user input to every CLI command: one sentence on stderr, a non-zero exit, never a traceback.

Every case runs the real entry point (``attmemo.cli:main`` / ``export_main``) on real
files, outside pytest, with its own stdout and stderr (file descriptors 1 and 2, so
onnxruntime's own logging would show too). Importing attmemo takes seconds
(onnxruntime-extensions imports transformers and torch), and forking after importing
onnxruntime is unsafe (measured: its exception path aborts a forked child), so one
runner process imports it once and runs the cases one after the other, ending each as
the console script's ``sys.exit(main())`` would end at the interpreter's top level: an
uncaught exception prints its traceback and exits 1.
``test_the_runner_agrees_with_the_console_script`` runs some cases through the
installed scripts too and compares.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

BIN = Path(sys.executable).parent

# Reads a JSON list of cases ({"argv", "cwd", "stdout", "stderr"}) on stdin, prints their exit codes as JSON.
RUNNER = r'''
import json, os, sys, traceback, warnings
from attmemo.cli import export_main, main


def crash():
    raise RuntimeError("a deliberate crash, to show that the check sees tracebacks")


ENTRIES = {"attmemo": main, "attmemo-export": export_main, "crash": crash}


def top_level(entry):
    """What the interpreter does with ``sys.exit(entry())`` in a script: the exit code."""
    try:
        code = entry()
    except SystemExit as error:
        code = error.code
    except BaseException:
        traceback.print_exc()
        return 1
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


codes = []
for case in json.load(sys.stdin):
    os.chdir(case["cwd"])
    sys.argv = case["argv"]
    getattr(warnings, "_filters_mutated", lambda: None)()     # a warning an earlier case showed shows again
    saved = os.dup(1), os.dup(2)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    try:
        codes.append(top_level(ENTRIES[sys.argv[0]]))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
print(json.dumps(codes))
'''


def run_cases(argvs: list[list], cwds: list[Path], folder: Path) -> list[subprocess.CompletedProcess]:
    """Run each argv in the runner process, in its cwd; return what each printed and its exit code."""
    cases = [{"argv": [str(a) for a in argv], "cwd": str(cwd), "stdout": str(folder / f"{i}.out"),
              "stderr": str(folder / f"{i}.err")} for i, (argv, cwd) in enumerate(zip(argvs, cwds))]
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(cases), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout.splitlines()[-1])
    results = []
    for case, code in zip(cases, codes):
        result = subprocess.CompletedProcess(case["argv"], code, Path(case["stdout"]).read_text(),
                                             Path(case["stderr"]).read_text())
        result.cwd = case["cwd"]
        results.append(result)
    return results


@dataclasses.dataclass
class Inputs:
    """Files a case can ask for; everything shared is copied into the case's own folder first."""
    tmp: Path
    tiny_model: Callable
    tiny_db: tuple[Path, Path, Path]

    def hf_folder(self) -> Path:
        return self.tiny_model("bert")[0]

    def plain(self) -> Path:
        return self._copy(self.tiny_model("bert")[1], "plain.onnx")

    def memo(self) -> Path:
        return self._copy(self.tiny_db[0], "memo.onnx")     # its tokenizer is found through its metadata

    def corpus(self) -> Path:
        return self._copy(self.tiny_db[2], "corpus.txt")

    def db(self) -> Path:
        target = self.tmp / "copy.memo"
        if not target.exists():
            shutil.copytree(self.tiny_db[1], target)
        return target

    def plain_at_opset(self, opset: int) -> Path:
        from attmemo.export.hf_export import export_hf_model
        return export_hf_model(self.hf_folder(), self.tmp / f"plain{opset}.onnx", opset=opset)

    def text_onnx(self) -> Path:
        return self.write("text.onnx", "this is not a model\n")

    def truncated_onnx(self) -> Path:
        data = self.tiny_model("bert")[1].read_bytes()
        path = self.tmp / "truncated.onnx"
        path.write_bytes(data[: len(data) // 3])
        return path

    def add_model(self) -> Path:
        """A valid ONNX model with no attention: C = A + B."""
        a, b, c = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ABC")
        graph = helper.make_graph([helper.make_node("Add", ["A", "B"], ["C"])], "add", [a, b], [c])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        onnx.checker.check_model(model, full_check=True)
        path = self.tmp / "add.onnx"
        onnx.save(model, path)
        return path

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def folder(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def under_a_file(self, name: str) -> Path:
        """A path whose parent is a regular file, so nothing can be created there."""
        return self.write("a-file", "x\n") / name

    def _copy(self, src: Path, name: str) -> Path:
        target = self.tmp / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        return target


def damaged_db(f: Inputs, how: str) -> Path:
    db = f.db()
    values = sorted(db.rglob("*.values"))[0]
    data = bytearray(values.read_bytes())
    if how == "truncate":
        values.write_bytes(bytes(data[:-100]))
    else:
        data[len(data) // 2] ^= 0xFF
        values.write_bytes(bytes(data))
    return db


def build_db(f: Inputs, *extra, corpus: Path | None = None) -> list:
    return ["attmemo", "build-db", f.memo(), "--corpus", corpus or f.corpus(), "--out", f.tmp / "out.memo", *extra]


def bench(f: Inputs, *extra, baseline: Path | None = None, memo: Path | None = None) -> list:
    return ["attmemo", "bench", "--baseline", baseline or f.plain(), "--memo", memo or f.memo(), "--rounds", "1",
            *extra]


# (case, argv builder, a phrase the one-line message must contain)
CASES: list[tuple[str, Callable[[Inputs], list], str]] = [
    # attmemo-export
    ("export: missing folder", lambda f: ["attmemo-export", f.tmp / "nowhere", f.tmp / "out.onnx"], "does not exist"),
    ("export: folder without config.json", lambda f: ["attmemo-export", f.folder("empty"), f.tmp / "out.onnx"],
     "has no config.json"),
    ("export: a file, not a folder", lambda f: ["attmemo-export", f.write("model.bin", "x"), f.tmp / "out.onnx"],
     "is a file, not a folder"),
    ("export: unreadable config.json",
     lambda f: ["attmemo-export", f.write("broken/config.json", "{not json").parent, f.tmp / "out.onnx"],
     "cannot be read by transformers"),
    ("export: config.json without weights",
     lambda f: ["attmemo-export", f._copy(f.hf_folder() / "config.json", "noweights/config.json").parent,
                f.tmp / "out.onnx"], "Cannot load the model weights"),
    ("export: unknown task", lambda f: ["attmemo-export", f.hf_folder(), f.tmp / "out.onnx", "--task", "frobnicate"],
     "is not supported"),
    ("export: opset too old", lambda f: ["attmemo-export", f.hf_folder(), f.tmp / "out.onnx", "--opset", "7"],
     "--opset 7"),
    ("export: out is a folder", lambda f: ["attmemo-export", f.hf_folder(), f.folder("outdir")], "is a folder"),
    ("export: out under a file", lambda f: ["attmemo-export", f.hf_folder(), f.under_a_file("out.onnx")],
     "is a file"),
    # attmemo transform
    ("transform: missing file", lambda f: ["attmemo", "transform", f.tmp / "missing.onnx", f.tmp / "o.onnx"],
     "no such file"),
    ("transform: text file named .onnx", lambda f: ["attmemo", "transform", f.text_onnx(), f.tmp / "o.onnx"],
     "not a readable ONNX model"),
    ("transform: truncated .onnx", lambda f: ["attmemo", "transform", f.truncated_onnx(), f.tmp / "o.onnx"],
     "not a readable ONNX model"),
    ("transform: empty .onnx", lambda f: ["attmemo", "transform", f.write("empty.onnx", ""), f.tmp / "o.onnx"],
     "not a readable ONNX model"),
    ("transform: no attention", lambda f: ["attmemo", "transform", f.add_model(), f.tmp / "o.onnx"],
     "no attention layer was recognised"),
    ("transform: already rewritten", lambda f: ["attmemo", "transform", f.memo(), f.tmp / "o.onnx"],
     "already"),
    # (opset 14-17 exports are rewritten since issue 13: tests/test_foreign_models.py)
    ("transform: opset 12 export", lambda f: ["attmemo", "transform", f.plain_at_opset(12), f.tmp / "o.onnx"],
     "opset 12 is older than 13"),
    ("transform: dst is a folder", lambda f: ["attmemo", "transform", f.plain(), f.folder("outdir")],
     "is a folder"),
    ("transform: dst under a file", lambda f: ["attmemo", "transform", f.plain(), f.under_a_file("o.onnx")],
     "is a file"),
    # attmemo bench
    ("bench: missing baseline", lambda f: bench(f, baseline=f.tmp / "missing.onnx"), "no such file"),
    ("bench: text file named .onnx", lambda f: bench(f, memo=f.text_onnx()), "not a readable ONNX model"),
    ("bench: truncated .onnx", lambda f: bench(f, baseline=f.truncated_onnx()), "not a readable ONNX model"),
    ("bench: empty .onnx", lambda f: bench(f, memo=f.write("empty.onnx", "")), "not a readable ONNX model"),
    ("bench: memo with no attention", lambda f: bench(f, memo=f.add_model()), "not a MemoAttention model"),
    ("bench: memo not rewritten", lambda f: bench(f, memo=f.plain()), "not a MemoAttention model"),
    ("bench: baseline not an encoder", lambda f: bench(f, baseline=f.add_model()), "input_ids"),
    ("bench: --seq 0", lambda f: bench(f, "--seq", "0"), "--seq 0"),
    ("bench: --seq too long", lambda f: bench(f, "--seq", "16", "100000"),
     "--seq 100000 exceeds the model's maximum of 126 tokens; use at most 126"),
    ("bench: --rounds 0", lambda f: bench(f, "--rounds", "0"), "--rounds 0"),
    ("bench: --threads -1", lambda f: bench(f, "--threads", "-1"), "--threads -1"),
    ("bench: --seq not a number", lambda f: bench(f, "--seq", "many"), "invalid int value"),
    # attmemo demo
    ("demo: workdir under a file", lambda f: ["attmemo", "demo", "--workdir", f.under_a_file("work")], "is a file"),
    ("demo: workdir is a file", lambda f: ["attmemo", "demo", "--workdir", f.write("work", "x")], "is a file"),
    # attmemo build-db: the model
    ("build-db: missing model", lambda f: ["attmemo", "build-db", f.tmp / "missing.onnx", "--corpus", f.corpus()],
     "no such file"),
    ("build-db: text file named .onnx", lambda f: ["attmemo", "build-db", f.text_onnx(), "--corpus", f.corpus()],
     "not a readable ONNX model"),
    ("build-db: truncated .onnx", lambda f: ["attmemo", "build-db", f.truncated_onnx(), "--corpus", f.corpus()],
     "not a readable ONNX model"),
    ("build-db: empty .onnx", lambda f: ["attmemo", "build-db", f.write("empty.onnx", ""), "--corpus", f.corpus()],
     "not a readable ONNX model"),
    ("build-db: no attention", lambda f: ["attmemo", "build-db", f.add_model(), "--corpus", f.corpus()],
     "not a MemoAttention model"),
    ("build-db: plain model", lambda f: ["attmemo", "build-db", f.plain(), "--corpus", f.corpus()],
     "not a MemoAttention model"),
    # attmemo build-db: the corpus
    ("build-db: missing corpus", lambda f: build_db(f, corpus=f.tmp / "missing.txt"), "no such corpus"),
    ("build-db: empty .txt", lambda f: build_db(f, corpus=f.write("empty.txt", "")), "has no non-empty text"),
    ("build-db: blank .jsonl", lambda f: build_db(f, corpus=f.write("blank.jsonl", "\n  \n\n")),
     "has no non-empty text"),
    ("build-db: folder without .txt", lambda f: build_db(f, corpus=f.folder("docs")), "has no .txt files"),
    ("build-db: folder of empty .txt", lambda f: build_db(f, corpus=f.write("docs/a.txt", " \n").parent),
     "has no non-empty text"),
    ("build-db: unknown corpus format", lambda f: build_db(f, corpus=f.write("texts.csv", "a,b\n")),
     "unknown corpus format"),
    ("build-db: .jsonl line not JSON",
     lambda f: build_db(f, corpus=f.write("bad.jsonl", '{"text": "ok"}\n{"text": "cut\n')), "bad.jsonl:2: not JSON"),
    ("build-db: .jsonl line without text",
     lambda f: build_db(f, corpus=f.write("bad.jsonl", '{"text": "ok"}\n\n{"title": "x"}\n')),
     'bad.jsonl:3: not a JSON object with a "text" field'),
    ("build-db: .jsonl text not a string",
     lambda f: build_db(f, corpus=f.write("bad.jsonl", '{"text": ["a"]}\n')), 'bad.jsonl:1: "text" is not a string'),
    ("build-db: .jsonl invalid UTF-8",
     lambda f: build_db(f, corpus=f.write("bad.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": "\xff\xfe"}\n')),
     "bad.jsonl:3: not valid UTF-8"),
    # attmemo build-db: the numbers and the output folder
    ("build-db: --max-length too long", lambda f: build_db(f, "--max-length", "100000"),
     "--max-length 100000 exceeds the model's maximum of 126 tokens; use at most 126"),
    ("build-db: --max-length 1", lambda f: build_db(f, "--max-length", "1"), "--max-length 1"),
    ("build-db: --limit 0", lambda f: build_db(f, "--limit", "0"), "--limit 0"),
    ("build-db: --threshold 2", lambda f: build_db(f, "--threshold", "2"), "--threshold 2 is outside (0, 1]"),
    ("build-db: --threshold nan", lambda f: build_db(f, "--threshold", "nan"), "--threshold nan is outside (0, 1]"),
    ("build-db: --out an existing folder",
     lambda f: ["attmemo", "build-db", f.memo(), "--corpus", f.corpus(), "--out", f.write("dir/keep.txt", "x").parent],
     "is not an attmemo database"),
    ("build-db: --out a file",
     lambda f: ["attmemo", "build-db", f.memo(), "--corpus", f.corpus(), "--out", f.write("out.memo", "x")],
     "is a file"),
    ("build-db: --out under a file",
     lambda f: ["attmemo", "build-db", f.memo(), "--corpus", f.corpus(), "--out", f.under_a_file("out.memo")],
     "is a file"),
    ("build-db: --corpus missing", lambda f: ["attmemo", "build-db", f.memo()], "--corpus"),
    # attmemo build-db --ray (checked before Ray starts; tests/test_ray_build.py runs it)
    ("build-db: --ray nobody there", lambda f: build_db(f, "--ray", "127.0.0.1:1"),
     "no Ray cluster answers at 127.0.0.1:1"),
    ("build-db: --ray not an address", lambda f: build_db(f, "--ray", "headnode"), "is not a Ray address"),
    ("build-db: --ray-workers without --ray", lambda f: build_db(f, "--ray-workers", "2"),
     "--ray-workers needs --ray"),
    ("build-db: --ray-workers 0", lambda f: build_db(f, "--ray", "local", "--ray-workers", "0"),
     "--ray-workers 0 records nothing"),
    # attmemo verify-db
    ("verify-db: missing folder", lambda f: ["attmemo", "verify-db", f.tmp / "nowhere.memo"],
     "no such database folder"),
    ("verify-db: not a database", lambda f: ["attmemo", "verify-db", f.folder("plain-folder")],
     "is not an attmemo database"),
    ("verify-db: a file", lambda f: ["attmemo", "verify-db", f.corpus()], "is a file"),
    ("verify-db: manifest not JSON",
     lambda f: ["attmemo", "verify-db", f.write("bad.memo/manifest.json", "{").parent], "not a valid attmemo manifest"),
    ("verify-db: truncated value file", lambda f: ["attmemo", "verify-db", damaged_db(f, "truncate")],
     "the manifest says"),
    ("verify-db: flipped byte", lambda f: ["attmemo", "verify-db", damaged_db(f, "flip")], "checksum differs"),
    # attmemo calibrate
    ("calibrate: missing model", lambda f: ["attmemo", "calibrate", f.tmp / "missing.onnx", "--corpus", f.corpus()],
     "no such file"),
    ("calibrate: plain model", lambda f: ["attmemo", "calibrate", f.plain(), "--corpus", f.corpus()],
     "not a MemoAttention model"),
    ("calibrate: no database", lambda f: ["attmemo", "calibrate", f.memo(), "--corpus", f.corpus(),
                                          "--db", f.tmp / "nowhere.memo"], "no such database folder"),
    ("calibrate: bad budget", lambda f: ["attmemo", "calibrate", f.memo(), "--corpus", f.corpus(),
                                         "--budget", "0.99"], "is not three numbers"),
    ("calibrate: empty corpus", lambda f: ["attmemo", "calibrate", f.memo(), "--corpus", f.write("empty.txt", ""),
                                           "--db", f.db()], "needs held-out texts"),
    ("calibrate: --max-length beyond the model", lambda f: ["attmemo", "calibrate", f.memo(), "--corpus", f.corpus(),
                                                           "--max-length", "100000"], "exceeds the model's maximum"),
    # attmemo eval
    ("eval: unknown workload", lambda f: ["attmemo", "eval", "--workload", "poetry"], "invalid choice"),
    ("eval: too few stored texts", lambda f: ["attmemo", "eval", "--workload", "edited", "--stored", "1",
                                              "--workdir", f.tmp / "ev"], "--stored must be at least 2"),
    ("eval: more queries than the workload has", lambda f: ["attmemo", "eval", "--workload", "edited", "--stored", "8",
                                                            "--queries", "9", "--workdir", f.tmp / "ev"],
     "must be at most stored"),
    ("eval: --max-length beyond the model", lambda f: ["attmemo", "eval", "--workload", "edited", "--max-length",
                                                       "100000", "--workdir", f.tmp / "ev"], "outside 2..512"),
    # attmemo eval on your own model and texts: the two modes are exclusive
    ("eval: --workload and --model", lambda f: ["attmemo", "eval", "--workload", "edited", "--model", f.memo()],
     "give either --workload NAME (a built-in workload on the bundled model) or --model MODEL.onnx"),
    ("eval: neither mode", lambda f: ["attmemo", "eval", "--workdir", f.tmp / "ev"], "give either --workload NAME"),
    ("eval: --model without --queries", lambda f: ["attmemo", "eval", "--model", f.memo(), "--corpus", f.corpus()],
     "--model needs --corpus STORED and --queries QUERIES"),
    ("eval: a query file with --workload", lambda f: ["attmemo", "eval", "--workload", "edited", "--queries",
                                                     f.corpus()], "with --workload it is how many queries"),
    ("eval: --model missing", lambda f: ["attmemo", "eval", "--model", f.tmp / "missing.onnx", "--corpus", f.corpus(),
                                         "--queries", f.corpus()], "no such file"),
    ("eval: --model not rewritten", lambda f: ["attmemo", "eval", "--model", f.plain(), "--corpus", f.corpus(),
                                               "--queries", f.corpus()], "not a MemoAttention model"),
    ("eval: --queries missing", lambda f: ["attmemo", "eval", "--model", f.memo(), "--corpus", f.corpus(),
                                           "--queries", f.tmp / "q.jsonl", "--workdir", f.tmp / "ev"],
     "no such corpus"),
    ("eval: too few queries", lambda f: ["attmemo", "eval", "--model", f.memo(), "--corpus", f.corpus(),
                                         "--queries", f.write("q.txt", "one\ntwo\n"), "--workdir", f.tmp / "ev"],
     "needs at least 2 stored texts and 4 queries"),
    # no command at all
    ("attmemo: unknown command", lambda f: ["attmemo", "frobnicate"], "invalid choice"),
]


# Input the checks above must still accept: (case, argv builder, a phrase stdout must contain).
GOOD: list[tuple[str, Callable[[Inputs], list], str]] = [
    ("bench: the tiny model at its maximum length",
     lambda f: bench(f, "--seq", "16", "126"), "  126 "),
    ("build-db: default --max-length, a .txt with one line of invalid UTF-8",
     lambda f: build_db(f, corpus=f.write("texts.txt", f.corpus().read_bytes() + b"bad \xff byte\n")),
     "(texts cut to 126 tokens)"),
]
NAMES = [name for name, _, _ in CASES + GOOD]


@pytest.fixture(scope="module")
def outcomes(tiny_model, tiny_db, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every case (and a deliberate crash) run once, in one runner process: {case name: result}."""
    argvs, cwds = [], []
    for name, make_argv, _ in CASES + GOOD:
        folder = tmp_path_factory.mktemp(re.sub(r"\W+", "-", name)[:40])
        argvs.append(make_argv(Inputs(folder, tiny_model, tiny_db)))
        cwds.append(folder)
    argvs.append(["crash"])
    cwds.append(cwds[-1])
    results = run_cases(argvs, cwds, tmp_path_factory.mktemp("outputs"))
    return dict(zip([*NAMES, "crash"], results))


@pytest.mark.parametrize("name, expected", [(name, expected) for name, _, expected in CASES],
                         ids=[name for name, _, _ in CASES])
def test_bad_input_is_one_sentence(name, expected, outcomes):
    assert_one_sentence(outcomes[name], expected)


def test_good_input_still_works(outcomes):
    bench_run, build_run = (outcomes[name] for name, _, _ in GOOD)
    for (name, _, expected), result in zip(GOOD, (bench_run, build_run)):
        assert result.returncode == 0 and expected in result.stdout, f"{name}: {result.stdout}\n{result.stderr}"
    assert bench_run.stderr == ""
    # The corpus is read three times (lengths, recording, self-check); the warning comes once.
    assert build_run.stderr.splitlines() == [
        f"WARNING attmemo.store.corpus: {build_run.cwd}/texts.txt: 1 line is not valid UTF-8 (line 17); "
        "the undecodable bytes were replaced with U+FFFD."]


def assert_one_sentence(result: subprocess.CompletedProcess, expected: str) -> None:
    shown = f"{' '.join(result.args)}\nexit {result.returncode}, stderr:\n{result.stderr}"
    assert result.returncode != 0, shown
    assert "Traceback" not in result.stderr, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert expected in lines[0], shown


def test_a_failed_rewrite_leaves_no_model(outcomes):
    result = outcomes["transform: opset 12 export"]
    assert result.returncode == 2 and not (Path(result.cwd) / "o.onnx").exists()


def test_the_check_sees_a_traceback(outcomes):
    """An uncaught exception ends a case as the interpreter ends a script, and fails the check."""
    result = outcomes["crash"]
    assert result.returncode == 1 and "Traceback" in result.stderr and "deliberate crash" in result.stderr
    with pytest.raises(AssertionError):
        assert_one_sentence(result, "deliberate crash")


@pytest.mark.parametrize("name", ["bench: --seq too long", "build-db: .jsonl invalid UTF-8", "demo: workdir is a file"])
def test_the_runner_agrees_with_the_console_script(name, outcomes):
    """The installed console script gives the same exit code and stderr as the runner."""
    case = outcomes[name]
    real = subprocess.run([str(BIN / case.args[0]), *case.args[1:]], capture_output=True, text=True, timeout=300,
                          cwd=case.cwd)
    assert (real.returncode, real.stderr) == (case.returncode, case.stderr)


def test_a_txt_corpus_with_invalid_utf8_is_read_with_a_warning(tmp_path, caplog):
    from attmemo.store.corpus import iter_texts

    corpus = tmp_path / "texts.txt"
    corpus.write_bytes(b"good text\nbad \xff byte\n\nalso \xfe\xfe bad\n")
    with caplog.at_level(logging.WARNING, logger="attmemo.store.corpus"):
        texts = list(iter_texts(corpus))
    assert texts == ["good text", "bad \ufffd byte", "also \ufffd\ufffd bad"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "texts.txt" in warnings[0] and "2 lines" in warnings[0] and "2, 4" in warnings[0]
