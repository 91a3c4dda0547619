"""The configuration: its schema (``schema``), loading and errors (``loading``), the registries of parts
above it (``registries``) and the generated reference page (``reference``).

The names most callers need are importable from here.
"""

from orchestrator.config.loading import (
    DEFAULT_CONFIG,
    ConfigError,
    apply_override,
    cross_field_problems,
    flatten_fields,
    load_config,
    validate_config,
)
from orchestrator.config.schema import CmpnasConfig

__all__ = ["DEFAULT_CONFIG", "CmpnasConfig", "ConfigError", "apply_override", "cross_field_problems",
           "flatten_fields", "load_config", "validate_config"]
