"""The CLI holds no defaults of its own: every flag that sets a library parameter is bound to it
(`mmbert.cli.Flags`), passes only what the user typed, and shows the library's default in --help;
so a default changed in the library is the CLI's default too and the two cannot drift.

    pytest tests/test_cli_defaults.py
"""

import argparse
import functools
import inspect
from pathlib import Path

import pytest

from mmbert.cli import build_parser, library_default, main, show_default

# options the CLI owns (not parameters of the library call) that have a value of their own
CLI_DEFAULTS = {("export", "--format"): "hf"}  # which library function `mmbert export` calls


def leaves(parser=None, prefix=()):
    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(prefix), parser
    for sub in subs:
        for name, p in sub.choices.items():
            yield from leaves(p, prefix + (name,))


def options(p):
    return [a for a in p._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction,
                                                         argparse._SubParsersAction))]


def test_every_bound_flag_is_a_library_parameter_with_no_default_of_its_own():
    bound = 0
    for name, p in leaves():
        for a in options(p):
            if not hasattr(a, "library"):
                continue
            bound += 1
            targets, param = a.library
            default = library_default(targets, param)  # TypeError if the library has no such parameter
            where = f"`mmbert {name}` {a.option_strings or a.dest} → {targets[0]}({param})"
            if a.option_strings:
                assert a.default is argparse.SUPPRESS, f"{where} has a CLI default {a.default!r}"
            if default is inspect.Parameter.empty:
                assert a.required or not a.option_strings, f"{where}: the library requires it, the CLI does not"
            if isinstance(a, argparse._StoreTrueAction):
                assert default is False, f"{where}: a switch that turns on something already on ({default!r})"
            if isinstance(a, argparse._StoreFalseAction):
                assert default is True, f"{where}: a switch that turns off something already off ({default!r})"
    assert bound > 100  # every subcommand's flags (a guard against the check silently matching nothing)


def test_options_the_library_does_not_take_have_no_defaults_beyond_the_listed_ones():
    for name, p in leaves():
        for a in options(p):
            if hasattr(a, "library") or a.required or a.default in (None, False, argparse.SUPPRESS):
                continue
            assert CLI_DEFAULTS.get((name, a.option_strings[0])) == a.default, (
                f"`mmbert {name}` {a.option_strings[0]} has its own default {a.default!r}: bind it to the library "
                f"parameter it sets (Flags.add) so the default lives there")


def test_help_shows_every_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no wrapping inside a default
    for name, p in leaves():
        text = p.format_help()
        for a in options(p):
            if a.nargs == 0 or a.required or not a.option_strings:
                continue  # switches are off unless given; required flags have no default
            default = library_default(*a.library) if hasattr(a, "library") else a.default
            shown = f"(default: {show_default(default)})" in text
            assert shown or (default is None and "default" in a.help), (
                f"`mmbert {name} --help` does not show the default of {a.option_strings[0]} ({default!r})")
        assert "--data " not in text  # hidden alias


def target_of(command: str, flag: str) -> str:
    """The library call `mmbert <command>`'s `flag` is bound to (so these tests follow a module move)."""
    p = dict(leaves())[command]
    return next(a.library[0][0] for a in p._actions if flag in a.option_strings)


def record(monkeypatch, target: str, result=None):
    """Replace library function `module:name` by a recorder of its arguments (same signature)."""
    module, name = target.split(":")
    mod = __import__(module, fromlist=[name])
    calls = []

    @functools.wraps(getattr(mod, name))
    def recorder(*a, **kw):
        calls.append((a, kw))
        return result

    monkeypatch.setattr(mod, name, recorder)
    return calls


def test_handlers_pass_only_what_the_user_set(monkeypatch, tmp_path):
    calls = record(monkeypatch, target_of("merge", "--models"), tmp_path / "m")
    assert main(["merge", "--models", "a", "b", "--out", str(tmp_path / "m")]) == 0
    assert calls[-1] == ((), {"models": ["a", "b"], "out": str(tmp_path / "m")})
    main(["merge", "--models", "a", "b", "--out", str(tmp_path / "m"), "--method", "ties", "--base", "c",
          "--density", "0.5", "--lambda", "2"])
    assert calls[-1][1] == {"models": ["a", "b"], "out": str(tmp_path / "m"), "method": "ties", "base": "c",
                            "density": 0.5, "lam": 2.0}

    calls = record(monkeypatch, target_of("eval", "--model"), {"seconds": 1.0, "tasks": {}})
    main(["eval", "--model", "m", "--out", str(tmp_path / "e"), "--seed", "3", "--tasks", "a,b"])
    assert calls[-1][1] == {"model_path": "m", "out_dir": str(tmp_path / "e"), "seed": 3, "tasks": ["a", "b"]}


def test_dataclass_targets_get_the_library_defaults_and_typed_values(monkeypatch, tmp_path):
    from mmbert.cli import resolve

    StudyConfig = resolve(target_of("study run", "--shards"))
    monkeypatch.chdir(tmp_path)  # the default --out (out/study) is locked while the command runs

    calls = record(monkeypatch, StudyConfig.__module__ + ":run_study")
    main(["study", "run", "--shards", str(tmp_path)])
    assert calls[-1][0] == (StudyConfig(shards=tmp_path),)
    main(["study", "run", "--shards", str(tmp_path), "--seeds", "4", "5", "--arms", "recipe", "--no-sib"])
    assert calls[-1][0] == (StudyConfig(shards=tmp_path, seeds=(4, 5), arms=("recipe",), sib=False),)


def test_a_library_default_is_the_cli_default(monkeypatch, capsys, tmp_path):
    """Change the library's default and the CLI (help and call) follows, with no edit to cli.py."""
    import mmbert.merge

    monkeypatch.chdir(tmp_path)

    def merge(models, out, method="ema", base=None, weights=None, density=1.0, lam=1.0, alpha=0.25,
              overwrite=False, progress=True):  # mmbert.merge.merge with two defaults changed
        calls.append(dict(models=models, out=out, method=method, alpha=alpha))
        return Path(out)

    calls = []
    monkeypatch.setattr(mmbert.merge, "merge", merge)
    main(["merge", "--models", "a", "--out", "o"])
    assert calls[-1]["method"] == "ema" and calls[-1]["alpha"] == 0.25
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: ema)" in help_text and "(default: 0.25)" in help_text


def test_shard_folder_flag_and_its_hidden_alias(tmp_path, monkeypatch, capsys):
    calls = record(monkeypatch, target_of("pretrain", "--shards"), "plan")
    for flag in ("--shards", "--data"):  # --data: the old spelling, still accepted
        assert main(["pretrain", flag, "s", "--out", str(tmp_path / flag), "--no-eval"]) == 0
        assert calls[-1][1] == {"shards": "s", "out": str(tmp_path / flag), "eval": False}
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "--shards" in out and "--data " not in out and "--data," not in out


def test_export_refuses_flags_of_the_other_format(tmp_path, capsys):
    rc = main(["export", "--model", "m", "--out", str(tmp_path / "o"), "--format", "onnx", "--dtype", "bf16"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: --dtype do not apply to --format onnx")
