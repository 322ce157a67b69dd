"""Reward models r(x, y) on transformers backbones, scored in the shared-prefix layout.

Two heads, one interface (``RewardModel(batch) -> rewards [B, K]``):

* ``classifier``: a sequence-classification model (``AutoModelForSequenceClassification`` with
  ``num_labels=1``, e.g. ``LlamaForSequenceClassification``); its backbone and ``score`` head.
* ``value``: a causal LM's decoder plus a scalar linear value head (the PPO critic's shape).

The reward of a response is the head applied to the hidden state of its last token (its EOS),
as in TRL's RewardTrainer and DeepSpeed-Chat. All K responses of a prompt share one row
(:mod:`pluralign.data.collate`): the prompt is computed once and each response attends only to
the prompt and itself, so its score equals scoring it alone (checked in the tests).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pluralign.data.collate import Batch
from pluralign.logprobs import model_inputs
from pluralign.models import load_model, unwrap_peft

HEADS = ("classifier", "value")
VALUE_HEAD = "value_head"  # the value head's module name inside the causal LM (saved with it)


def response_token_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every response token, in the order of ``batch.gather_seq``: collation
    lays responses out row by row, segment by segment, which is row-major order."""
    rows, cols = ((batch.part_ids > 0) & (batch.doc_ids >= 0)).nonzero(as_tuple=True)
    if rows.shape[0] != batch.gather_seq.shape[0]:
        raise ValueError("batch: response tokens and gathered targets disagree; not a collated batch")
    return rows, cols


def last_token_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sequence index, row, column) of the last token of every response present in the batch."""
    rows, cols = response_token_positions(batch)
    n_seq = batch.num_examples * batch.max_responses
    order = torch.arange(rows.shape[0], device=rows.device)
    last = torch.full((n_seq,), -1, dtype=torch.long, device=rows.device)
    last = last.scatter_reduce(0, batch.gather_seq, order, reduce="amax")
    present = (last >= 0).nonzero(as_tuple=True)[0]
    return present, rows[last[present]], cols[last[present]]


def zero_value_head(hidden_size: int, dtype) -> nn.Linear:
    """A scalar linear head with zero weight and bias: every value (or reward) starts at 0."""
    head = nn.Linear(hidden_size, 1).to(dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class RewardModel(nn.Module):
    """A transformers model ``source`` (a sequence classifier, or a causal LM carrying a
    ``value_head`` module) scored by its backbone and head at each response's last token.
    ``source`` holds every weight, so saving it saves the reward model."""

    def __init__(self, source: nn.Module, kind: str):
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"reward model head {kind!r}: expected one of {list(HEADS)}")
        self.source, self.kind = source, kind

    @property
    def backbone(self) -> nn.Module:
        return unwrap_peft(self.source).base_model

    @property
    def head(self) -> nn.Module:
        return getattr(unwrap_peft(self.source), "score" if self.kind == "classifier" else VALUE_HEAD)

    @classmethod
    def from_sequence_classifier(cls, model: nn.Module) -> "RewardModel":
        inner = unwrap_peft(model)
        if getattr(inner, "score", None) is None or getattr(inner.config, "num_labels", 1) != 1:
            raise ValueError("reward model: expected a sequence-classification model with a 'score' head and "
                             f"num_labels=1, got {type(inner).__name__}")
        return cls(model, "classifier")

    @classmethod
    def with_value_head(cls, lm: nn.Module) -> "RewardModel":
        """Adds a zero-initialised linear value head to ``lm`` (if it has none): every reward starts
        at 0 (loss ln 2) and the backbone's first gradient is 0."""
        inner = unwrap_peft(lm)
        if not hasattr(inner, VALUE_HEAD):
            setattr(inner, VALUE_HEAD, zero_value_head(inner.config.hidden_size, inner.dtype))
        return cls(lm, "value")

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        """The backbone's last hidden state [rows, L, H] over the collated ``batch``."""
        backbone = self.backbone
        dtype = next(backbone.parameters()).dtype
        return backbone(**model_inputs(batch, dtype, config=backbone.config), use_cache=False).last_hidden_state

    def token_values(self, batch: Batch) -> torch.Tensor:
        """The head at the position that predicts each response token, flat in ``batch.gather_seq``
        order: at token t of response y it reads the hidden state of the last token of x y_<t, so
        for t >= 1 it is the reward of the partial response y_<t (the PPO critic's V(s_t))."""
        hidden = self.hidden_states(batch)
        return self.head(hidden[batch.gather_row, batch.gather_pos]).squeeze(-1).float()

    def forward(self, batch: Batch) -> torch.Tensor:
        """Rewards [B, K] (0 where an example has fewer than K responses)."""
        hidden = self.hidden_states(batch)
        seq, rows, cols = last_token_positions(batch)
        scores = self.head(hidden[rows, cols]).squeeze(-1).float()
        flat = torch.zeros(batch.num_examples * batch.max_responses, device=scores.device, dtype=scores.dtype)
        return flat.index_put((seq,), scores).view(batch.num_examples, batch.max_responses)

    def save_pretrained(self, path: str | Path, **kwargs) -> None:
        """The transformers model: a classifier loads with AutoModelForSequenceClassification; a
        value-head model with :func:`load_reward_model` (or AutoModelForCausalLM, dropping the head)."""
        self.source.save_pretrained(str(path), **kwargs)


def build_reward_model(name: str, tokenizer, head: str = "classifier", *, dtype: str = "float32", seed: int = 0,
                       attn_implementation: str | None = "sdpa") -> RewardModel:
    """A new reward model on backbone ``name`` (``tiny`` or a Hub id / folder of a causal LM or a
    sequence classifier). ``classifier`` copies the backbone's weights under a fresh score head."""
    from transformers import AutoModelForSequenceClassification

    if head not in HEADS:
        raise ValueError(f"reward_model.head {head!r}: expected one of {list(HEADS)}")
    lm = load_model(name, tokenizer, dtype=dtype, attn_implementation=attn_implementation, seed=seed)
    if head == "value":
        return RewardModel.with_value_head(lm)
    config = lm.config
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = AutoModelForSequenceClassification.from_config(config).to(lm.dtype)
    missing = clf.base_model.load_state_dict(lm.base_model.state_dict(), strict=False)
    if missing.missing_keys:
        raise ValueError(f"reward model on {name!r}: backbone weights missing for {missing.missing_keys[:5]}")
    return RewardModel.from_sequence_classifier(clf)


def load_reward_tokenizer(path: str | Path, fallback):
    """The tokenizer of a reward-model folder (``pluralign rm`` saves the model's own beside its
    weights), else ``fallback``. Texts are re-tokenized with it before scoring, so a reward model
    whose vocabulary differs from the policy's scores the policy's decoded completions correctly."""
    from pluralign.models import load_tokenizer

    return load_tokenizer(str(path)) if (Path(path) / "tokenizer_config.json").is_file() else fallback


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers map every token to the same id (token ids can be shared between them)."""
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


def load_reward_model(path: str | Path, tokenizer, *, dtype: str = "float32") -> RewardModel:
    """Load a reward model saved by :meth:`RewardModel.save_pretrained` (a checkpoint's ``model/``
    folder) or any sequence classifier; a value head is recognised by its weights."""
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    from pluralign.models import resolve_dtype

    path = Path(path)
    weights = path / "model.safetensors"
    keys = set()
    if weights.exists():
        with safe_open(str(weights), "pt") as fh:
            keys = set(fh.keys())
    head_keys = {f"{VALUE_HEAD}.weight", f"{VALUE_HEAD}.bias"}
    if head_keys <= keys:
        lm = load_model(str(path), tokenizer, dtype=dtype)
        with safe_open(str(weights), "pt") as fh:
            state = {k.split(".", 1)[1]: fh.get_tensor(k) for k in head_keys}
        head = nn.Linear(state["weight"].shape[1], 1).to(lm.dtype)
        head.load_state_dict(state)
        setattr(lm, VALUE_HEAD, head)
        return RewardModel(lm, "value")
    clf = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=resolve_dtype(dtype))
    return RewardModel.from_sequence_classifier(clf)
