"""The ``dussss`` command: ``python -m monai.bundle`` with our errors printed as their message alone.

``dussss run training --config_file bundles/dussss_monuseg/configs/train.json --dataset_dir ...`` takes exactly
the arguments of ``python -m monai.bundle`` (which keeps working: our configs install the same error hook in their
first step). An error of ours ends the output with its message, naming the file or setting and the fix; the exit
status is 1. ``DUSSS_TRACEBACK=1`` shows the traceback as well.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

from dussss_monai.bundle.cli import install_error_hook

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``monai.bundle`` with ``argv`` (default: this process's arguments)."""
    install_error_hook()
    sys.argv = ["dussss", *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
