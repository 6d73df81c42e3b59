"""Which pip extra a part of nexus-optim needs (standard library only, so the ``nexus``
command can say so before torch or the harness loads).

    pip install nexus-optim              the optimizer: torch only
    pip install 'nexus-optim[hf]'        + nexus_optim.integrations (transformers, accelerate)
    pip install 'nexus-optim[harness]'   + the ``nexus`` command (data, train, eval, report)
    pip install 'nexus-optim[eval]'      + lm-eval
"""

from __future__ import annotations


def missing_for_extra(extra: str) -> list[str]:
    """The distributions that nexus-optim's ``[extra]`` requires and that are not installed,
    read from the installed package's own metadata (pyproject.toml is the one list; extras
    that name other extras, ``nexus-optim[hf]``, are followed). ``[]`` when nexus-optim is
    not installed as a distribution (a source tree on ``sys.path``): nothing to check."""
    import re
    from importlib import metadata

    try:
        requirements = metadata.requires("nexus-optim") or []
    except metadata.PackageNotFoundError:
        return []
    missing: set[str] = set()
    for req in requirements:
        spec, _, marker = req.partition(";")
        if not re.search(r"extra\s*==\s*['\"]" + re.escape(extra) + r"['\"]", marker):
            continue
        name = re.match(r"\s*([A-Za-z0-9._-]+)", spec).group(1)
        if re.sub(r"[-_.]+", "-", name).lower() == "nexus-optim":
            inner = re.search(r"\[([^\]]*)\]", spec)
            for other in (inner.group(1).split(",") if inner else []):
                missing.update(missing_for_extra(other.strip()))
            continue
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(name)
    return sorted(missing)


def require_extra(extra: str, what: str) -> None:
    """Raise one-line ``ImportError`` naming the extra to install when ``what`` (a module or
    command) is used without the packages of nexus-optim's ``[extra]``."""
    missing = missing_for_extra(extra)
    if missing:
        raise ImportError(f"{what} needs nexus-optim's [{extra}] extra (missing: {', '.join(missing)}); "
                          f"install it with: pip install 'nexus-optim[{extra}]'")
