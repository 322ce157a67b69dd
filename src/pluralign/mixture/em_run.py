"""Reading an EM run directory (the layout ``pluralign em`` writes; README "Min-max-regret
aggregation and mixture policies"): config.json, tokenizer/, em_result.json, types/type_k/, and
base/ when the base is not loadable by name.

A saved base is named by a path relative to the folder holding ``em_result.json`` (``"base"`` in
the run directory, ``"../base"`` in its ``cluster_dpo/`` folder, which is a run folder of its own:
config.json, tokenizer/, em_result.json, type_k/), never relative to the working directory.

Every problem is reported with the file and the key before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pluralign.mixture.policy import KINDS, MixtureError, MixturePolicy, assemble, check_weights, read_json

EM_RESULT_KEYS = ("n_types", "type_weights", "kind", "base", "types", "beta")


@dataclass
class EMRun:
    run_dir: Path
    config: dict
    result: dict

    @property
    def type_dirs(self) -> list[Path]:
        return [self.run_dir / t for t in self.result["types"]]

    @property
    def type_names(self) -> list[str]:
        return [Path(t).name for t in self.result["types"]]

    def tokenizer(self):
        from pluralign.models import load_tokenizer

        return load_tokenizer(str(self.run_dir / "tokenizer"))

    def load_base(self, tokenizer):
        """The SFT/base model of em_result.base (a saved folder relative to the run folder, else a name)."""
        from pluralign.models import load_model

        base = self.result["base"]
        local = saved_base(self.run_dir, base["name"])
        name = str(local) if local is not None else base["name"]
        seed = int((self.config.get("model") or {}).get("seed", 0))  # the offline tiny models are built from it
        return load_model(name, tokenizer, dtype=base.get("dtype") or "float32", gguf_file=base.get("gguf_file"), seed=seed)

    def mixture(self, weights=None) -> MixturePolicy:
        """The run's type policies as a MixturePolicy (default weights: the run's type weights)."""
        tokenizer = self.tokenizer()
        w = self.result["type_weights"] if weights is None else weights
        return assemble(self.load_base(tokenizer), tokenizer, self.result["kind"], self.type_dirs, self.type_names, w,
                        beta=float(self.result["beta"]), dtype=self.result["base"].get("dtype") or "float32",
                        where=str(self.run_dir / "em_result.json"))

    def world(self):
        """The world the run's data was drawn from (config.json ``data.world``), else None."""
        spec = (self.config.get("data") or {}).get("world")
        if not spec:
            return None
        from pluralign.eval.cli import load_world

        try:
            return load_world(spec["name"])
        except (KeyError, ValueError) as err:
            raise MixtureError(f"{self.run_dir / 'config.json'}: data.world: {err}") from None

    def data_path(self) -> str | None:
        return (self.config.get("data") or {}).get("path")


def saved_base(run_dir: Path, name: str) -> Path | None:
    """The saved base folder that em_result.base.name denotes relative to ``run_dir`` (the contract's
    ``"base"``, or a ``./`` / ``../`` path), else None (a model name or an absolute path)."""
    return run_dir / name if name == "base" or name.startswith(("./", "../")) else None


def load_em_run(run_dir) -> EMRun:
    """Read and check an EM run directory (files, keys, type folders, weights)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MixtureError(f"{run_dir}: not an EM run directory (no such folder)")
    where = run_dir / "em_result.json"
    result = read_json(where, EM_RESULT_KEYS)
    config = read_json(run_dir / "config.json", ())
    K = result["n_types"]
    if not isinstance(K, int) or K < 1:
        raise MixtureError(f"{where}: n_types: expected a positive integer, got {K!r}")
    if not isinstance(result["types"], list) or len(result["types"]) != K:
        raise MixtureError(f"{where}: types: expected {K} folders (n_types), got {result['types']!r}")
    if result["kind"] not in KINDS:
        raise MixtureError(f"{where}: kind: expected one of {KINDS}, got {result['kind']!r}")
    if not isinstance(result["base"], dict) or "name" not in result["base"]:
        raise MixtureError(f"{where}: base: expected an object with a 'name', got {result['base']!r}")
    check_weights(result["type_weights"], K, f"{where}: type_weights")
    if not (run_dir / "tokenizer").is_dir():
        raise MixtureError(f"{run_dir / 'tokenizer'}: missing (the EM run saves its tokenizer there)")
    marker = "adapter_config.json" if result["kind"] == "lora" else "config.json"
    for t in result["types"]:
        if not (run_dir / t / marker).is_file():
            raise MixtureError(f"{where}: types: {run_dir / t} has no {marker} (kind {result['kind']!r})")
    local = saved_base(run_dir, str(result["base"]["name"]))
    if local is not None and not (local / "config.json").is_file():
        raise MixtureError(f"{where}: base.name is {result['base']['name']!r} but {local} (relative to the folder of "
                           "em_result.json) holds no saved model")
    return EMRun(run_dir, config, result)
