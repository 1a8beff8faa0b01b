"""run_dir: a run folder's metrics rows, whether it holds a run, replacing one, and the newest
readable checkpoint."""
from __future__ import annotations

import pytest

from saom_ros.model import CheckpointError
from saom_ros.training.run_dir import clear_run, has_run, metric_rows, readable_checkpoint


def test_metric_rows_keep_the_well_formed_rows_up_to_the_step(tmp_path, capsys):
    path = tmp_path / "metrics.csv"
    header = "step,epoch,lr,loss,dice,focal,ce,iou,prompts,images_per_s\n"
    good = [f"{s},0,0.001,1.5,0.5,0.5,0.5,0.1,8,3.0\n" for s in (1, 2, 3)]
    path.write_text(header + good[0] + "x\n" + good[1] + "2,0,,,,,,,,\n" + good[2] + "1")
    assert [int(r["step"]) for r in metric_rows(path, 2)] == [1, 2]
    assert "metrics.csv: dropped 3 malformed row(s)" in capsys.readouterr().err


def test_clear_run_removes_the_run_and_keeps_other_files(tmp_path):
    assert not has_run(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000003.pt").write_bytes(b"x")
    (tmp_path / "embedding_cache").mkdir()
    assert has_run(tmp_path)
    clear_run(tmp_path)
    assert not has_run(tmp_path) and not (tmp_path / "checkpoints").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedding_cache"]


def test_no_readable_checkpoint_raises_the_last_ones_error(tmp_path):
    assert readable_checkpoint(tmp_path, report=True) is None
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="last.pt"):
        readable_checkpoint(tmp_path, report=True)
