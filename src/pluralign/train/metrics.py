"""Step statistics (TRL's metric names) and where they go: metrics.jsonl, TensorBoard, W&B."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from pluralign.errors import PluralignError


class StepStats:
    """Accumulates per-example statistics over the micro-batches of one step, then reduces them
    across processes. Means are over examples (unweighted), like TRL's logged metrics."""

    def __init__(self, groups: list[str], device):
        self.groups = groups
        self.group_names = sorted(set(groups))
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.count = torch.zeros((), device=device)
        self.tokens = 0
        self.padding = []
        G = len(self.group_names)
        self.group_correct = torch.zeros(G, device=device)
        self.group_total = torch.zeros(G, device=device)
        self.group_of_annotator = torch.tensor([self.group_names.index(g) for g in groups], dtype=torch.long, device=device) if groups else None

    def add(self, losses, weights, stats, groups, num_tokens, padding_fraction):
        self.sums["loss"] = self.sums.get("loss", 0) + (weights * losses).sum().float()
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0) + v.float().sum()
        self.count += losses.numel()
        self.tokens += num_tokens
        self.padding.append(padding_fraction)
        if self.group_of_annotator is not None:
            known = groups >= 0
            g = self.group_of_annotator[groups[known]]
            self.group_correct.index_add_(0, g, stats["rewards/accuracies"][known].float())
            self.group_total.index_add_(0, g, torch.ones_like(g, dtype=torch.float32))

    def reduce(self, accelerator, seconds: float) -> dict:
        names = sorted(self.sums)
        flat = torch.stack([torch.as_tensor(self.sums[n], device=self.device).float() for n in names] + [self.count.float(), torch.tensor(float(self.tokens), device=self.device)])
        gc, gt = self.group_correct, self.group_total
        if accelerator is not None and accelerator.num_processes > 1:
            flat, gc, gt = (accelerator.reduce(t, reduction="sum") for t in (flat, gc, gt))
        count, tokens = float(flat[-2]), float(flat[-1])
        row = {n: float(flat[i]) / max(count, 1.0) for i, n in enumerate(names)}
        row["examples_per_second"] = count / max(seconds, 1e-9)
        row["tokens_per_second"] = tokens / max(seconds, 1e-9)
        row["padding_fraction"] = sum(self.padding) / max(1, len(self.padding))
        for i, name in enumerate(self.group_names):
            if float(gt[i]) > 0:
                row[f"rewards/accuracies/{name}"] = float(gc[i]) / float(gt[i])
        return row


class MetricsLogger:
    """Writes one JSON line per logged step to ``metrics.jsonl`` (always, on the main process) and to
    TensorBoard / Weights & Biases when asked for and installed.

    ``resume_step``: the run continues after that step; rows of ``metrics.jsonl`` past it (logged
    after the checkpoint, before the interruption) are dropped so no step appears twice, and the
    W&B run id stored in the run folder is reused so W&B continues the same run.
    """

    def __init__(self, out: Path, report_to: list[str], is_main: bool, resume_step: int | None = None,
                 config: dict | None = None):
        self.is_main = is_main
        self.tb = self.wandb = None
        self.fh = None
        unknown = sorted(set(report_to) - {"jsonl", "tensorboard", "wandb"})
        if unknown:
            raise PluralignError(f"train.report_to: unknown target(s) {unknown}; expected jsonl, tensorboard, wandb")
        if not is_main:
            return
        path = out / "metrics.jsonl"
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines(keepends=True) if _row_step(line) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(path)
        self.fh = open(path, "a" if resume_step is not None else "w")
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise PluralignError("report_to has 'tensorboard' but it is not installed: pip install 'pluralign[tensorboard]'") from exc
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1)
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError as exc:
                raise PluralignError("report_to has 'wandb' but it is not installed: pip install 'pluralign[wandb]'") from exc
            id_file = out / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
            id_file.write_text(run_id)
            self.wandb = wandb.init(project="pluralign", dir=str(out), config=config, id=run_id, resume="allow")

    def log(self, row: dict) -> None:
        if not self.is_main:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.fh.write(json.dumps(clean) + "\n")
        self.fh.flush()
        step = row.get("step")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _row_step(line: str) -> float:
    """The step of one metrics.jsonl line; a torn last line (killed mid-write) sorts after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
