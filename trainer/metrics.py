"""Per-step training metrics to `<output_dir>/metrics.csv` and TensorBoard (`<output_dir>/tb`).

    with MetricsWriter(out_dir, tensorboard=True, enabled=env.is_main) as metrics:
        metrics.log(step, {"loss": 2.1, "lr": 1e-5, "tokens_per_s": 9000.0})

The CSV has one row per logged step with the columns `step` then the metric names in the order
first seen (common ones: loss, lr, grad_norm, tokens, supervised_tokens, tokens_per_s,
padding_waste, elapsed_s; distill adds kd and ce; grpo its own); `factory report` plots it. A
resumed run appends to the same file after dropping rows past the resume step, so the file is
one continuous curve. Only rank 0 writes.

Not covered: metric backends other than TensorBoard (W&B, MLflow): they read the CSV or the
event files.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsWriter:
    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.csv"
        self.columns: list[str] | None = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resume_step + 1 if resume_step else None)
            except ImportError:  # pragma: no cover - tensorboard is in the train extra
                log.warning("tensorboard is not installed; metrics go to the CSV only (pip install 'reasoning-factory[train]')")

    def _truncate_after(self, step: int) -> None:
        with self.path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            return
        self.columns = list(rows[0].keys())
        keep = [r for r in rows if int(r["step"]) <= step]
        with self.path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.columns)
            w.writeheader()
            w.writerows(keep)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **values}
        if self.columns is None:
            self.columns = list(row.keys())
            with self.path.open("w", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.columns).writeheader()
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """metrics.csv as a list of {column: float} (empty cells are skipped)."""
    with Path(path).open(newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
