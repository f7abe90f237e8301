"""Fill the ${NAME} placeholders of an infra/ manifest from the environment and print it.

    python infra/render.py infra/kuberay/raycluster.yaml | kubectl apply -f -
    python infra/render.py infra/ray-cluster-launcher/aws.yaml > infra/rendered/aws.yaml

Only `${UPPER_CASE}` with braces is a placeholder, so shell variables the manifests pass on to
the cluster (`$RAY_HEAD_IP`, `$${POSTGRES_USER}`) are left alone. Every placeholder must be set
and non-empty: a missing one is an error naming all of them, never a silently empty field.
Only non-secret values belong in placeholders; credentials reach pods through a Secret or a role.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Mapping

PLACEHOLDER = re.compile(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)\}")


def placeholders(text: str) -> list[str]:
    """The placeholder names in `text`, in first-use order, without repeats."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


def render(text: str, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    missing = [name for name in placeholders(text) if not env.get(name)]
    if missing:
        raise KeyError(", ".join(missing))
    return PLACEHOLDER.sub(lambda match: env[match.group(1)], text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python infra/render.py MANIFEST", file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        text = path.read_text()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(render(text))
    except KeyError as exc:
        print(f"error: {path} needs these variables set: {exc.args[0]} (see infra/README.md)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
