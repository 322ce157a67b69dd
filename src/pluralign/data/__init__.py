"""Preference data: records, loaders for TRL/HH-RLHF/ranked formats, and validation.

Tokenization and collation live in :mod:`pluralign.data.tokenize` and :mod:`pluralign.data.collate`
(imported explicitly, since collation needs torch).
"""

from pluralign.data.loaders import (
    DataError,
    LoadReport,
    LoadResult,
    load_preferences,
    save_preferences,
    split_implicit_prompt,
)
from pluralign.data.records import (
    PreferenceRecord,
    RankingTieError,
    RecordError,
    TieError,
)
from pluralign.data.validate import (
    DatasetStatistics,
    add_validate_parser,
    compute_statistics,
    validate_command,
    validate_file,
)

__all__ = [
    "DataError",
    "DatasetStatistics",
    "LoadReport",
    "LoadResult",
    "PreferenceRecord",
    "RankingTieError",
    "RecordError",
    "TieError",
    "add_validate_parser",
    "compute_statistics",
    "load_preferences",
    "save_preferences",
    "split_implicit_prompt",
    "validate_command",
    "validate_file",
]
