"""benchmarks/accelerator.py --smoke: every case of the accelerator benchmark runs (on CPU, at tiny
sizes) and reports a number, so the script is ready for the first GPU it meets."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_accelerator_benchmark_smoke_run_reports_every_row():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "accelerator.py"), "--smoke"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    main_table, _, depthwise = out.stdout.partition("\n\n")
    rows = [line for line in main_table.splitlines()
            if line.startswith("| ") and not line.startswith("| measurement")]
    names = ("train DeepLab-v2", "train DeepLab-v3+", "infer DeepLab-v2", "infer DeepLab-v3+",
             "dense CRF meanfield")
    for name in names:
        assert any(row.startswith(f"| {name}") for row in rows), out.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        failed = ("Error", "exit", "timeout", "skipped")
        assert not any(word in cell for cell in cells for word in failed), row
        float(cells[1].replace(",", ""))  # ours: a number
        if not row.startswith("| dense CRF"):
            float(cells[2].replace(",", ""))  # PyTorch: a number
    # The depthwise table (benchmarks/depthwise.py): forward / backward ms of each form and of
    # PyTorch for the smoke run's three shapes (strided, two atrous).
    shapes = [line for line in depthwise.splitlines()
              if line.startswith("| ") and not line.startswith("| input")]
    assert len(shapes) == 3, depthwise
    for row in shapes:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        for cell in (cells[1], cells[2], cells[4]):  # conv, taps, PyTorch
            forward, backward = (float(t) for t in cell.split(" / "))
            assert forward >= 0 and backward >= 0, row
