import json

import pytest


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """48 short preference pairs from two annotator groups (maj, min), in TRL's explicit-prompt format."""
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with open(path, "w") as fh:
        for i in range(48):
            fh.write(json.dumps({"prompt": f"Q{i % 6}: pick one", "chosen": f" yes {i % 3}", "rejected": f" no {i % 5}!",
                                 "annotator_id": f"{'maj' if i % 3 else 'min'}/a{i % 4}"}) + "\n")
    return path
