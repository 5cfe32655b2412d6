"""tools/ablate.py: runs train_net.py per row and seed, reads each split's AP per class group back,
reuses finished runs, and prints the test and val tables (a quick version: a few iterations per
run)."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import ablate  # noqa: E402


@pytest.mark.slow
def test_quick_ablation_table(tmp_path, capsys):
    out = str(tmp_path / "abl")
    argv = ["--quick", "--rows", "full,no_align", "--seeds", "0", "--out", out]
    assert ablate.main(argv) == 0
    text = capsys.readouterr().out
    assert "| full |" in text and "| no_align |" in text and "AP novel-concept" in text
    # the held-out split's table first, then the one choices are made on
    assert text.index("**synthetic_test**") < text.index("**synthetic_val**")
    data = json.load(open(os.path.join(out, "ablation.json")))
    assert {(r["row"], r["seed"]) for r in data["results"]} == {("full", 0), ("no_align", 0)}
    for r in data["results"]:
        # the tables report each run's own final evaluation, of each split
        with open(os.path.join(out, f"{r['row']}_seed0", "metrics.json")) as f:
            final = [json.loads(line) for line in f if line.strip()][-1]
        for split in ("synthetic_test", "synthetic_val"):
            for metric in ("APnovel", "AP-base", "AP-novel-compositional", "AP-novel-concept"):
                key = f"{split}/open_vocabulary/{metric}"
                assert r[split][metric] == pytest.approx(final[key], nan_ok=True), key
        assert not r["reused"]
    # the no-alignment run really ran without the image-level alignment loss
    metrics = open(os.path.join(out, "no_align_seed0", "metrics.json")).read()
    assert "loss_image_align" not in metrics
    assert "loss_image_align" in open(os.path.join(out, "full_seed0", "metrics.json")).read()
    # a second call reuses the finished runs
    assert ablate.main(argv) == 0
    assert "reused" in capsys.readouterr().out
    assert open(os.path.join(out, "ablation.md")).read().startswith("Ablation of")


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        ablate.main(["--rows", "full,nonsense"])
    with pytest.raises(SystemExit):
        ablate.main(["--seeds", "a,b"])
