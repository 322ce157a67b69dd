"""Pieces of free-text online rounds that need no model: probe/pool files, recipe checks, text labels."""

import json

import numpy as np
import pytest

from pluralign.online.config import OnlineRunConfig, check_online_config
from pluralign.online.freetext import load_prompt_responses
from pluralign.online.judges import shorter_is_better
from pluralign.online.problem import JudgeLabeler, RewardLabeler, draw_text_labels, pair_matrix
from pluralign.train.config import ConfigError, load_config


def test_probe_and_pool_files_load_and_name_what_is_wrong(tmp_path):
    good = tmp_path / "probe.jsonl"
    good.write_text(json.dumps({"prompt": "Q?", "responses": ["a", "b"]}) + "\n\n"
                    + json.dumps({"prompt": "R?", "responses": ["c", "d", "e"]}) + "\n")
    assert load_prompt_responses(str(good), "online.probe", 2) == [("Q?", ["a", "b"]), ("R?", ["c", "d", "e"])]
    assert load_prompt_responses([{"prompt": "Q?", "responses": ["a"]}], "online.pool", 1) == [("Q?", ["a"])]
    bad = tmp_path / "bad.jsonl"
    cases = [
        ('{"prompt": "Q?", "responses": ["a", "b"]}\n{"prompt": "Q?", "responses": ["a"]}\n',
         f"{bad}:2: 'responses' must be a list of at least 2 strings"),
        ('{"prompt": "Q?", "responses": ["a", "a"]}\n', f"{bad}:1: 'responses' must be distinct"),
        ('{"responses": ["a", "b"]}\n', f"{bad}:1: expected an object with a string 'prompt'"),
        ('{"prompt": "Q?", "responses": [\n', f"{bad}:1: not a JSON object"),
        ("\n", "online.probe: no prompts with responses"),
    ]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("[", r"\[")):
            load_prompt_responses(str(bad), "online.probe", 2)
    with pytest.raises(ConfigError, match=r"online.probe\[0\]: 'responses'"):
        load_prompt_responses([{"prompt": "Q?", "responses": "ab"}], "online.probe", 2)
    with pytest.raises(ConfigError, match="no such file"):
        load_prompt_responses(str(tmp_path / "missing.jsonl"), "online.probe", 2)


FREE = "recipes/online_freetext_tiny.yaml"


@pytest.mark.parametrize("recipe, override, message", [
    (FREE, "online.labels=preference", "labels free text: set online.labels to judge or reward_model"),
    (FREE, "online.sampler=uniform", "online.responses = 'generate' draws with the mixture sampler"),
    (FREE, "online.max_new_tokens=0", "online.max_new_tokens = 0; expected an integer >= 1"),
    (FREE, "online.top_p=1.5", r"online.top_p = 1.5; expected a number in \(0, 1\]"),
    (FREE, "reference.name=tiny", "reference.name is not read by the online loop"),
    ("recipes/online_tiny.yaml", "online.probe=probe.jsonl", "online.probe is read only with online.responses"),
])
def test_free_text_recipe_errors_name_the_key(recipe, override, message):
    with pytest.raises(ConfigError, match=message):
        check_online_config(load_config(recipe, [override], cls=OnlineRunConfig))


def test_inline_probe_in_a_recipe():
    cfg = load_config(FREE, ['online.probe=[{prompt: "Q?", responses: [a, b]}]'], cls=OnlineRunConfig)
    assert cfg.online.probe == [{"prompt": "Q?", "responses": ["a", "b"]}]


def test_text_labels_follow_bradley_terry_rewards_and_ask_once_per_pair():
    texts = ["x" * k for k in (1, 2, 3, 4)] * 1000  # 4000 texts, 2000 consecutive pairs
    calls = []

    def rewards(prompts, completions):
        calls.append(len(completions))
        return np.array([0.5 * len(c) for c in completions]), {}

    ranked, tied = draw_text_labels(RewardLabeler(None, rewards), "Q?", texts, 2, np.random.default_rng(0))
    assert tied == 0 and calls == [4000]  # every text scored once
    # pairs are (1, 2) and (3, 4) characters: the longer wins with sigmoid(0.5)
    longer_first = np.array([len(texts[w]) > len(texts[l]) for w, l in ranked])
    p = 1 / (1 + np.exp(-0.5))
    assert abs(longer_first.sum() - 2000 * p) / np.sqrt(2000 * p * (1 - p)) < 4
    asked = []
    judge = JudgeLabeler(None, lambda prompt, a, b: asked.append((a, b)) or 1.0)
    ranked, _ = draw_text_labels(judge, "Q?", ["a", "b", "c", "d", "e", "f"], 3, np.random.default_rng(0))
    assert len(asked) == 6 and ranked.tolist() == [[0, 1, 2], [3, 4, 5]]  # a always-a judge keeps the order


def test_brevity_judge():
    assert shorter_is_better("", "a" * 10, "a" * 30) == pytest.approx(1 / (1 + np.exp(-1.0)), rel=1e-12)
    P = pair_matrix(JudgeLabeler(None, shorter_is_better), "", ["short", "a bit longer", " short "])
    assert np.allclose(P + P.T, 1.0) and P[0, 2] == 0.5 and P[0, 1] > 0.5
