"""YAML for configuration files: a key written twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a ``params.yaml`` with a section
written twice silently loses half of it. :func:`safe_load_strict` reads like
``yaml.safe_load`` but refuses a repeated key at any level, naming the key and both lines.
"""

from __future__ import annotations

from typing import Any

import yaml

from pipeline.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (merge keys ``<<`` are allowed)."""

    source = "<yaml>"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: PyYAML reports it itself
            continue
        if first is not None:
            raise ConfigError(
                f"{loader.source}: line {line}: key {key!r} is written twice in one section "
                f"(first on line {first}); keep one"
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def safe_load_strict(text: str, source: str = "<yaml>") -> Any:
    """``yaml.safe_load(text)``, refusing a key repeated in one mapping (:class:`ConfigError`)."""
    loader = _StrictLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
