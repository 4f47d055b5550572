"""``--checkpoint org/name``: a Hugging Face Hub repo id, resolved to a local snapshot folder.

Resolved through ``huggingface_hub`` as its users set it up: its cache (``HF_HOME`` / ``HF_HUB_CACHE``,
and ``HF_ENDPOINT``, read when called, so a changed environment counts), ``HF_TOKEN`` (or ``hf auth login``) for
private and gated repos, ``HF_HUB_OFFLINE=1`` for the cache only. Online, a network failure falls back to
the cache. Only what a checkpoint needs is downloaded (configs, safetensors, tokenizer and generation
files, the model card), not ``.bin`` / ``.pt`` copies of the same weights.

A local path that exists always wins; an id is ``org/name`` (or ``name``) made of Hub characters.
Failures are one :class:`~xlstm_export.errors.CheckpointError` line naming the id and what to do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError, first_line

REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
PATTERNS = ["*.json", "*.yaml", "*.safetensors", "README.md"]
_TRUE = {"1", "on", "yes", "true"}


def looks_like_repo_id(spec: str) -> bool:
    """``org/name`` shaped (a single ``name`` is a repo id too on the Hub, but also any missing local
    folder's name: only ``org/name`` is taken as an id when no such path exists)."""
    return "/" in spec and bool(REPO_ID.match(spec)) and ".." not in spec and not spec.startswith(("./", "/"))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _cache_dir() -> Optional[str]:
    """The hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def resolve_hub(repo_id: str, revision: Optional[str] = None) -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision`` (default: main), downloaded if needed."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub import errors as hf
    except ImportError:  # pragma: no cover - a core dependency
        raise CheckpointError(f"{repo_id}: no such local path; reading a Hub id needs huggingface_hub "
                              f"(pip install huggingface_hub)") from None
    at = f" at revision {revision!r}" if revision else ""
    token = os.environ.get("HF_TOKEN") or None

    def download(local_only: bool) -> str:
        return snapshot_download(repo_id, revision=revision, cache_dir=_cache_dir(), token=token,
                                 local_files_only=local_only, allow_patterns=PATTERNS,
                                 endpoint=os.environ.get("HF_ENDPOINT") or None, etag_timeout=10)

    from .. import progress

    is_offline = offline()
    try:
        if not is_offline:
            progress.note(f"resolving {repo_id}{at} on the Hugging Face Hub")
        try:
            return Path(download(is_offline))
        except (hf.RepositoryNotFoundError, hf.RevisionNotFoundError, hf.GatedRepoError, hf.HFValidationError):
            raise
        except (hf.HfHubHTTPError, OSError, hf.LocalEntryNotFoundError) as e:
            if is_offline:
                raise
            # the network failed (or the Hub answered oddly): what the cache holds, if anything
            progress.note(f"Hub unreachable ({first_line(e)[:100]}); using the local cache")
            return Path(download(True))
    except hf.GatedRepoError:
        raise CheckpointError(f"{repo_id}: a gated model on the Hugging Face Hub; accept its terms on its page and "
                              f"set HF_TOKEN (or run hf auth login)") from None
    except hf.RevisionNotFoundError:
        raise CheckpointError(f"{repo_id}: no revision {revision!r} on the Hugging Face Hub; pass an existing "
                              f"branch, tag or commit with --revision") from None
    except hf.RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such local path, and no such model on the Hugging Face Hub (a private "
                              f"one needs HF_TOKEN); check the id") from None
    except hf.LocalEntryNotFoundError:
        how = ("HF_HUB_OFFLINE is set" if is_offline else "the Hub cannot be reached")
        raise CheckpointError(f"{repo_id}: no such local path, and not in the Hugging Face cache{at} "
                              f"({_cache_dir() or 'the default cache'}) "
                              f"and {how}; download it once online (hf download {repo_id}"
                              f"{' --revision ' + revision if revision else ''}) or point HF_HOME / HF_HUB_CACHE "
                              f"at a cache that holds it") from None
    except hf.HFValidationError as e:
        raise CheckpointError(f"{repo_id}: not a Hugging Face repo id ({first_line(e)[:120]})") from None
    except (hf.HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"{repo_id}: cannot fetch it from the Hugging Face Hub ({first_line(e)[:160]}); "
                              f"check the network, or set HF_HUB_OFFLINE=1 to use the cache") from None


def resolve_checkpoint(spec: str | os.PathLike, revision: Optional[str] = None) -> Path:
    """A local path as given; a Hub id (``org/name`` that is not an existing path) as its snapshot folder."""
    p = Path(spec)
    s = os.fspath(spec)
    try:
        exists = os.path.lexists(p)
    except (OSError, ValueError):
        exists = False
    if not exists and isinstance(s, str) and looks_like_repo_id(s):
        return resolve_hub(s, revision)
    if revision is not None:
        raise CheckpointError(f"{s}: --revision applies to Hugging Face Hub ids (org/name), not to a local path")
    return p


__all__ = ["looks_like_repo_id", "resolve_checkpoint", "resolve_hub", "offline"]
