"""``python -m torch_hollow`` is the ``torch-hollow`` command."""

from torch_hollow.cli import main

raise SystemExit(main())
