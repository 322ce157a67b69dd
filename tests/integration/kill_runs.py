"""A training run that kills itself with SIGKILL at a chosen point, for the kill -9 tests.

    python kill_runs.py DATA OUT POINT SAVE

POINT is where the process dies during checkpoint number SAVE (1-based): ``before-rename`` (the
temporary folder is complete), ``before-latest`` (renamed, ``latest`` not yet updated),
``before-prune`` (``latest`` updated, older checkpoints not yet pruned), ``mid-write`` (model weights
written, tokenizer and trainer state not); ``none`` runs to the end (the parent may kill it at
any moment).
"""

import os
import signal
import sys

from pluralign.train import checkpoint

ARGS = ["train.progress_bar=false", "optim.lr=1e-3", "optim.scheduler=linear", "train.batch_size=8",
        "train.max_steps=6", "train.save_every=1", "train.keep_checkpoints=2", "data.layout=shared"]


def config(data, out, *extra):
    from pluralign.train.config import load_config

    return load_config(None, [f"data.path={data}", f"train.output_dir={out}", *ARGS, *extra])


def _die_at(save: int, wrapped):
    calls = [0]

    def hook(*args, **kwargs):
        calls[0] += 1
        if calls[0] == save:
            os.kill(os.getpid(), signal.SIGKILL)
        return wrapped(*args, **kwargs)

    return hook


if __name__ == "__main__":
    data, out, point, save = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if point == "before-rename":
        checkpoint._fsync_tree = _die_at(save, checkpoint._fsync_tree)
    elif point == "before-latest":
        checkpoint._write_atomic = _die_at(save, checkpoint._write_atomic)
    elif point == "before-prune":
        checkpoint.Checkpointer._prune = _die_at(save, checkpoint.Checkpointer._prune)
    elif point == "mid-write":
        from transformers import PreTrainedTokenizerBase

        PreTrainedTokenizerBase.save_pretrained = _die_at(save, PreTrainedTokenizerBase.save_pretrained)
    from pluralign.train.offline import train

    train(config(data, out))
