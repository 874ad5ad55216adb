"""`mmbert pretrain`: dry run resolves recipe + shards; user mistakes are one line, exit code 1."""

import json

from mmbert.cli import main

from tinyrun import tiny_recipe


def test_dry_run_prints_phases_and_language_sets(shards, tmp_path, capsys):
    rc = main(["pretrain", "--recipe", "cpu-demo", "--shards", str(shards), "--out", str(tmp_path / "r"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| main | pretrain |" in out and "decay-all" in out
    assert "pretrain: 4 languages" in out  # top:12 of the 4 synthetic languages
    assert not (tmp_path / "r").exists()


def test_recipe_json_file_and_errors(shards, tmp_path, capsys):
    path = tmp_path / "recipe.json"
    path.write_text(tiny_recipe().to_json())
    rc = main(["pretrain", "--recipe", str(path), "--shards", str(shards), "--out", str(tmp_path / "r"), "--dry-run"])
    assert rc == 0 and "tiny-test" not in capsys.readouterr().err
    rc = main(["pretrain", "--recipe", "nope", "--shards", str(shards), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 1 and "error: unknown recipe 'nope'" in err and err.count("\n") == 2
    bad = json.loads(tiny_recipe().to_json())
    bad["variants"]["decay-all"][0]["tokens"] = 0
    path.write_text(json.dumps(bad))
    rc = main(["pretrain", "--recipe", str(path), "--shards", str(shards), "--out", str(tmp_path / "r")])
    assert rc == 1 and "decay-all" in capsys.readouterr().err
    rc = main(["pretrain", "--recipe", "mmbert", "--preset", "tiny", "--shards", str(shards), "--out", str(tmp_path / "r")])
    assert rc == 1 and "max_position_embeddings" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
