import json
import subprocess
import sys

from conftest import CONFIGS, run_cli


def test_split_counts_only_cifar10_n1500(capsys):
    code, out, _ = run_cli(["split", "--config", CONFIGS / "cifar10_lt/consistent_n1500_m3000_g100.yaml",
                            "--counts-only"], capsys)
    assert code == 0
    counts = json.loads(out)
    assert counts["labeled"] == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert counts["unlabeled"] == [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]


def test_split_reversed_prints_unlabeled_reversed(capsys):
    _, out, _ = run_cli(["split", "--config", CONFIGS / "cifar10_lt/reversed_n1500_m3000_g100.yaml",
                         "--counts-only"], capsys)
    assert json.loads(out)["unlabeled"] == [30, 50, 83, 139, 232, 387, 646, 1078, 1798, 3000]


def test_bad_value_exits_2_with_one_line_naming_key():
    result = subprocess.run(
        [sys.executable, "-m", "cissl.cli", "split", "--config",
         str(CONFIGS / "cifar10_lt/consistent_n1500_m3000_g100.yaml"), "--counts-only",
         "data.imbalance_ratio=-3"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.imbalance_ratio" in lines[0] and "Traceback" not in result.stderr


def test_counts_only_of_a_labeled_fraction_asks_for_the_data_in_one_line(capsys):
    """Small-ImageNet-127's counts are a fraction of each class's size, which only the data knows."""
    code, out, err = run_cli(["split", "--config", CONFIGS / "imagenet127/32px.yaml", "--counts-only"], capsys)
    assert (code, out) == (2, "")
    assert err == ("cissl: error: data.labeled_fraction: the counts follow the data's class sizes; read the data "
                   "(drop --counts-only)\n")


def test_missing_config_file_exits_2(capsys):
    code, _, err = run_cli(["split", "--config", "nope.yaml", "--counts-only"], capsys)
    assert code == 2 and "nope.yaml" in err


def test_split_reads_data_and_saves_indices(tmp_path, capsys):
    code, out, _ = run_cli(["split", "--config", CONFIGS / "quickstart.yaml", "--save", tmp_path / "s.json"],
                           capsys)
    summary = json.loads(out)
    assert code == 0 and summary["labeled_total"] == sum(summary["labeled"])
    assert summary["saved"] == str(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["labeled_counts"] == summary["labeled"]
