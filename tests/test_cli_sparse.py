"""CLI: attnlab receptive-field and attnlab scaling."""
import json

from typer.testing import CliRunner

from attnlab.cli import _load_commands, app

_load_commands()
runner = CliRunner()


def test_receptive_field_mistral_and_measured():
    r = runner.invoke(app, ["receptive-field", "-L", "32", "-W", "4096", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"layers": 32, "window": 4096, "receptive_field": 131041,
                                    "naive_L_times_W": 131072}
    r = runner.invoke(app, ["receptive-field", "-L", "3", "-W", "5", "--measure"])
    assert r.exit_code == 0 and "13" in r.output and "measured" in r.output
    r = runner.invoke(app, ["receptive-field", "-L", "32", "-W", "4096", "--measure"])
    assert r.exit_code != 0 and "needs L·(W−1)+1 <= 2000" in r.output


def test_scaling_json_and_bad_range():
    r = runner.invoke(app, ["scaling", "--from", "256", "--to", "512", "--repeats", "1", "--json"])
    assert r.exit_code == 0, r.output
    names = [x["name"] for x in json.loads(r.output)]
    assert names == ["full", "lsh", "window", "bigbird"]
    r = runner.invoke(app, ["scaling", "--from", "512", "--to", "256"])
    assert r.exit_code != 0 and "--to (256) must be >= --from (512)" in r.output
