"""JAX's persistent compilation cache, on by default: a compiled program is written to disk once and a new
process (the next command-line run, the next script) loads it instead of compiling it again.

The directory is ``$MESTIM_CACHE_DIR`` (default ``~/.cache/mestim/jax``); ``MESTIM_CACHE_DIR=off`` (or an empty
value) turns the cache off. A cache directory the user already gave JAX (``jax_compilation_cache_dir``) is kept.
"""

from __future__ import annotations

import os

import jax

CACHE_ENV = "MESTIM_CACHE_DIR"
_OFF = {"", "0", "off", "none", "false", "no"}


def cache_dir_from_environment() -> str | None:
    """The cache directory ``$MESTIM_CACHE_DIR`` asks for (None: turned off)."""
    value = os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "mestim", "jax"))
    return None if value.strip().lower() in _OFF else value


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn the persistent cache on at ``path`` (default: :func:`cache_dir_from_environment`).

    Returns the directory in use, or None when the cache is off or the directory cannot be created (a read-only
    home directory: mestim then runs without the cache).

    Example (at import mestim turns the cache on, unless ``MESTIM_CACHE_DIR=off``; asking again for the directory
    in use changes nothing)::

        >>> import jax, mestim
        >>> in_use = jax.config.jax_compilation_cache_dir
        >>> path = mestim.enable_compilation_cache(in_use)
        >>> path == jax.config.jax_compilation_cache_dir == in_use or in_use is None
        True
    """
    path = path if path is not None else cache_dir_from_environment()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def enable_default_cache() -> str | None:
    """At import: the cache of :func:`enable_compilation_cache`, unless JAX already has a cache directory."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    return enable_compilation_cache()
