"""Renders docs/errors.md from the catalog, so the doc never drifts from the code.

    python -m frostpoint.errors.docs > docs/errors.md
"""

from __future__ import annotations

from frostpoint.errors.catalog import CATALOG


def render() -> str:
    out = ["# Error catalog", "",
           "Generated from `src/frostpoint/errors/catalog.py` by "
           "`python -m frostpoint.errors.docs`; `frostpoint errors [CODE]` prints the same.",
           "In the actions, `{machine}` is the machine's name, `{job}` a job id and "
           "SCRIPT the script's path: each is filled in when the error names it.", "",
           "| code | kind | retryable | message |", "|---|---|---|---|"]
    for spec in CATALOG.values():
        out.append(f"| [{spec.code}](#{spec.code.lower()}) | {spec.kind} | "
                   f"{'yes' if spec.retryable else 'no'} | {spec.message} |")
    for spec in CATALOG.values():
        retry = "retry may help" if spec.retryable else "retry alone will not help"
        out += ["", f"## {spec.code}", "", spec.message, "",
                f"Kind: {spec.kind}; {retry}. HTTP status of a request that fails "
                f"with it: {spec.http_status}.",
                "", "Likely causes, most likely first:", ""]
        out += [f"{n}. {c}" for n, c in enumerate(spec.causes, 1)]
        if spec.actions:
            out += ["", "What fixes it:", "", "```"] + list(spec.actions) + ["```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
