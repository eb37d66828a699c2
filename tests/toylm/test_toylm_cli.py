import json

from click.testing import CliRunner

from mechdiff.toylm.__main__ import main


def test_cli_reuses_an_existing_pair_and_prints_it(toy_backdoor):
    out_dir = toy_backdoor.base_dir.parent
    stamp = (toy_backdoor.ft_dir / "model.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(main, [str(out_dir), "--reuse"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["trigger"], doc["target"], doc["adapter"]) == (toy_backdoor.trigger, toy_backdoor.target, None)
    assert doc["ft"] == str(toy_backdoor.ft_dir)
    assert doc["metrics"] == toy_backdoor.metrics
    assert (toy_backdoor.ft_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_cli_rejects_unknown_variant(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path), "--variant", "poison"])
    assert result.exit_code == 2
    assert "poison" in result.output
    assert not any(tmp_path.iterdir())
