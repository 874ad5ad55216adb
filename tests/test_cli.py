"""Every `mmbert` subcommand dispatches to a handler and documents every option; user mistakes end
in one `error:` line (no traceback) unless --debug."""

import argparse

import pytest

from mmbert.cli import build_parser, main

EXPECTED = {"corpus build", "tokenizer train", "data prepare", "pretrain", "merge", "eval", "bench", "export",
            "fill-mask", "embed", "demo", "serve"}


def leaf_parsers(parser: argparse.ArgumentParser, prefix=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(prefix), parser
        return
    for sub in subs:
        for name, p in sub.choices.items():
            yield from leaf_parsers(p, prefix + (name,))


def test_every_subcommand_dispatches_and_documents_its_options():
    leaves = dict(leaf_parsers(build_parser()))
    assert EXPECTED <= set(leaves), f"missing subcommands: {EXPECTED - set(leaves)}"
    for name, p in leaves.items():
        assert callable(p.get_default("func")), f"`mmbert {name}` has no handler"
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help and a.help.strip(), f"`mmbert {name}` option {a.option_strings or a.dest} has no help"


@pytest.mark.parametrize("cmd", sorted(EXPECTED))
def test_help_exits_cleanly(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd.split() + ["--help"])
    assert e.value.code == 0
    assert "usage: mmbert" in capsys.readouterr().out


def test_user_error_is_one_line_without_traceback(tmp_path, capsys):
    rc = main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and "no such model directory" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mmbert", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "pretrain" in r.stdout


def test_version(capsys):
    import mmbert

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mmbert {mmbert.__version__}"


def test_one_dtype_vocabulary_across_subcommands(capsys):
    """Every --dtype flag takes both spellings (fp32/float32, bf16/bfloat16), shows the short one in
    --help, and names them all when wrong."""
    leaves = dict(leaf_parsers(build_parser()))
    flags = [(name, a) for name, p in leaves.items() for a in p._actions
             if a.dest in ("dtype", "peer_dtypes")]
    assert {name for name, _ in flags} >= {"export", "embed", "fill-mask", "serve", "bench"}
    for name, a in flags:
        assert a.choices is None and a.type is not None, f"`mmbert {name}` {a.option_strings} has its own vocabulary"
        assert a.type("fp32") == a.type("float32") == a.type("FP32") == "fp32"
        assert a.type("bf16") == a.type("bfloat16") == "bf16"
        with pytest.raises(argparse.ArgumentTypeError, match="fp32/float32"):
            a.type("float64")
        # --help spells them one way (the canonical names); the error above lists every spelling
        assert "float" not in f"{a.metavar} {a.help}", f"`mmbert {name}` {a.option_strings} help names torch spellings"
