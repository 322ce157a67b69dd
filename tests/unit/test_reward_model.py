"""Reward models: shared-prefix scores equal scoring alone, save/load, and training on a
Bradley-Terry world reaches high held-out accuracy and ranks held-out rankings."""

import numpy as np
import pytest
import torch

from pluralign.data.collate import Collator
from pluralign.data.records import PreferenceRecord
from pluralign.data.tokenize import tokenize_records
from pluralign.models import load_tokenizer
from pluralign.objectives.reward import reward_model_loss, reward_stats
from pluralign.reward_model import build_reward_model, load_reward_model
from pluralign.rl.rewards import ModelReward
from pluralign.worlds import World
from tolerance import assert_close_scaled

TOK = load_tokenizer("byte")
RECORDS = [
    PreferenceRecord("Q: which?\nA:", (" Tea.", " Coffee, please.", " Water"), (1, 0, 2)),
    PreferenceRecord("Hi", (" there", " you"), (0, 1)),
]


def _data():
    return tokenize_records(RECORDS, TOK, max_length=64, max_prompt_length=32)


@pytest.mark.parametrize("head", ["classifier", "value"])
def test_shared_prefix_scores_equal_scoring_alone(head):
    rm = build_reward_model("tiny", TOK, head, seed=1).eval()
    if head == "value":  # a non-zero head, so the check is not 0 == 0
        torch.nn.init.normal_(rm.head.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    data = _data()
    with torch.no_grad():
        shared = rm(Collator(TOK.pad_token_id, "shared")(data.examples))
        plain = rm(Collator(TOK.pad_token_id, "plain")(data.examples))
        assert_close_scaled(shared, plain, rel=1e-4, what="shared vs plain")
        for b, ex in enumerate(data.examples):
            for k, resp in enumerate(ex.response_ids):
                ids = torch.tensor([list(ex.prompt_ids) + list(resp)])
                if head == "classifier":  # transformers' own pooling reads the last token too
                    alone = rm.source(input_ids=ids).logits[0, 0]
                else:
                    alone = rm.head(rm.backbone(input_ids=ids).last_hidden_state[0, -1])[0]
                assert float(shared[b, k]) == pytest.approx(float(alone), rel=1e-4, abs=1e-6)
    assert float(shared[1, 2]) == 0.0  # the second prompt has two responses


@pytest.mark.parametrize("head", ["classifier", "value"])
def test_save_and_load_round_trip(tmp_path, head):
    rm = build_reward_model("tiny", TOK, head, seed=2).eval()
    torch.nn.init.normal_(rm.head.weight, std=1.0, generator=torch.Generator().manual_seed(1))
    rm.save_pretrained(tmp_path / "rm")
    back = load_reward_model(tmp_path / "rm", TOK).eval()
    batch = Collator(TOK.pad_token_id, "shared")(_data().examples)
    with torch.no_grad():
        assert_close_scaled(back(batch), rm(batch), rel=1e-6, what="reloaded scores")


def _bt_world() -> World:
    """One annotator group (a pure Bradley-Terry population), 4 prompts x 4 candidates."""
    rng = np.random.default_rng(0)
    prompts = [f"Q{i}: pick one.\nA:" for i in range(4)]
    cands = [[" red.", " blue.", " green.", " black."]] * 4
    rewards = [np.array([rng.permutation([2.0, 0.7, -0.7, -2.0])]) for _ in prompts]
    return World(prompts, cands, ["all"], np.array([1.0]), rewards, minority_group=0, annotators_per_group=10)


def test_reward_model_learns_a_bradley_terry_world_and_ranks_held_out_rankings():
    world = _bt_world()
    rm = build_reward_model("tiny", TOK, "value", seed=0)
    # the 16 (prompt, candidate) sequences in one shared-prefix batch, all candidates in world order
    every = [PreferenceRecord(p, tuple(world.candidates[x]), tuple(range(4))) for x, p in enumerate(world.prompts)]
    candidates = Collator(TOK.pad_token_id, "shared")(tokenize_records(every, TOK, max_length=64, max_prompt_length=32).examples)
    pairs = [world.record_indices(r) for r in world.sample_pairs(2048, seed=1)]
    x = torch.tensor([p for p, _ in pairs])
    chosen, rejected = (torch.tensor([ij[n] for _, ij in pairs]) for n in (0, 1))
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    for _ in range(80):  # full batch: the loop's math without the loop; each distinct sequence scored once
        table = rm(candidates)
        both = torch.stack([table[x, chosen], table[x, rejected]], 1)
        ranking = torch.tensor([[0, 1]]).expand(len(pairs), 2)
        losses = reward_model_loss(both, ranking, torch.full((len(pairs),), 2), torch.ones_like(both, dtype=torch.bool),
                                   center_coefficient=0.01)
        opt.zero_grad()
        losses.mean().backward()
        opt.step()
    rm.eval()
    with torch.no_grad():
        table = rm(candidates)
    # held out: the true order of every prompt's candidates (all 24 pairs), and fresh PL rankings
    truth = torch.tensor(np.stack([np.argsort(-world.rewards[x][0]) for x in range(4)]))
    full = torch.ones(4, 4, dtype=torch.bool)
    stats = reward_stats(table, truth, torch.full((4,), 4), full)
    assert float(stats["rewards/ranking_accuracy"].mean()) >= 0.95
    held = [world.record_indices(r) for r in world.sample_rankings(64, seed=2)]
    ranks = torch.tensor([list(order) for _, order in held])
    pl = reward_stats(table[torch.tensor([p for p, _ in held])], ranks, torch.full((64,), 4), torch.ones(64, 4, dtype=torch.bool))
    # a sampled PL ranking agrees with the true order on ~80% of its pairs at these reward gaps;
    # a reward model that recovered the order matches that, a random one gets 0.5
    assert float(pl["rewards/ranking_accuracy"].mean()) >= 0.7
    # the reward model as a reward function scores text with the same numbers
    scores = ModelReward(rm, TOK)([world.prompts[0]] * 4, world.candidates[0])
    assert_close_scaled(torch.tensor(scores), table[0], rel=1e-5, what="ModelReward")
