"""Model sources: a local folder or a Hugging Face cache snapshot, listed without escapes."""

from safeload.source._folder import ModelEntry, check_relative_name, list_model_files, path_matcher
from safeload.source._hf import hf_cache_dir, parse_hf_ref, resolve_hf_ref

__all__ = [
    "ModelEntry",
    "check_relative_name",
    "hf_cache_dir",
    "list_model_files",
    "parse_hf_ref",
    "path_matcher",
    "resolve_hf_ref",
]
