"""``python -m pluralign.lab <command>``: same as ``pluralign lab <command>``."""

from .cli import main

raise SystemExit(main())
