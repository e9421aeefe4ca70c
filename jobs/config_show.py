"""``semidff config show``: the resolved configuration (file + overrides + embedded defaults) as YAML.

    semidff config show -c jobs/configs/tiny.yaml video.key_interval=5
    python -m jobs.config_show -c jobs/configs/tiny.yaml video.key_interval=5     # the same command

A bad key or value exits 2 with a message naming the key and the allowed values (semidff.config).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, resolve_config, run_module


def config_show_command(config: Optional[Path] = CONFIG_OPTION, overrides: Optional[List[str]] = OVERRIDES_ARGUMENT) -> None:
    """Print the resolved configuration (file + overrides + defaults) as YAML."""
    typer.echo(resolve_config(config, overrides).to_yaml(), nl=False)


if __name__ == "__main__":  # pragma: no cover
    run_module(config_show_command)
