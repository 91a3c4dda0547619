"""Export of searched query models: packages with a compatibility manifest, checks, registry."""

from orchestrator.export.errors import ExportError
from orchestrator.export.pipeline import ExportRequest, export_candidates
from orchestrator.export.verify import VerifyOptions, verify_compatibility

__all__ = ["ExportError", "ExportRequest", "VerifyOptions", "export_candidates", "verify_compatibility"]
