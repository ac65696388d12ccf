"""Two runs side by side (`ra runs diff A B`): pure functions over the details of each
run (`racli.store.queries.run_details`); sections of rows {"key", "a", "b", "differs"}
and their text, differing rows marked `*` (docs/store.md)."""

from __future__ import annotations

import json
import math
from typing import Any

from racli.store.columns import DIFF_FIELDS, ENV_SHOWN, RUN_FIGURES

_WIDTH = 42  # characters of a value shown in the text (--json has them whole)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]} (lists stay values)."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for k in sorted(data, key=str):
        key = f"{prefix}.{k}" if prefix else str(k)
        v = data[k]
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _rows(a: dict, b: dict, keys=None) -> list[dict]:
    keys = list(keys) if keys is not None else sorted(set(a) | set(b))
    return [
        {"key": k, "a": a.get(k), "b": b.get(k), "differs": a.get(k) != b.get(k)}
        for k in keys
        if a.get(k) is not None or b.get(k) is not None
    ]


def code_of(d: dict) -> dict:
    """The code-provenance fields of a run's details."""
    config = d.get("config") if isinstance(d.get("config"), dict) else {}
    code = config.get("code") if isinstance(config.get("code"), dict) else {}
    return {
        "ra_version": code.get("version"),
        "ra_commit": code.get("commit"),
        "ra_dirty": code.get("dirty"),
        "ra_diff": code.get("diff"),
        "git_commit (working directory)": d.get("git_commit"),
    }


def _figures(d: dict) -> dict:
    out = {k: d.get(k) for k in RUN_FIGURES}
    for name, m in sorted((d.get("metrics") or {}).items()):
        out[f"last {name}"] = m.get("last")
    for t in d.get("timings") or []:
        key = f"{t['attn']} {t['mode']} {t['phase']}" + (
            f" {t['backend']}" if t.get("backend") else ""
        )
        out[f"ms {key}"] = t["median_ms"] if t.get("median_ms") is not None else t.get("status")
    return out


def diff_runs(a: dict, b: dict) -> dict:
    """{"a": id, "b": id, "differences": n, "sections": [{"name", "rows"}]}."""
    config_a = {k: v for k, v in (a.get("config") or {}).items() if k != "code"}
    config_b = {k: v for k, v in (b.get("config") or {}).items() if k != "code"}
    fig_a, fig_b = _figures(a), _figures(b)
    sections = [
        ("run", _rows(a, b, DIFF_FIELDS)),
        ("code", _rows(code_of(a), code_of(b), list(code_of(a)))),
        ("environment", _rows(a.get("environment") or {}, b.get("environment") or {}, ENV_SHOWN)),
        ("config", _rows(flatten(config_a), flatten(config_b))),
        ("final figures", _rows(fig_a, fig_b, list(dict.fromkeys([*fig_a, *fig_b])))),
    ]
    out = [{"name": name, "rows": rows} for name, rows in sections]
    n = sum(r["differs"] for s in out for r in s["rows"])
    return {"a": a.get("id"), "b": b.get("id"), "differences": n, "sections": out}


def _cell(v: Any) -> str:
    if v is None:
        text = "-"
    elif isinstance(v, bool):
        text = "yes" if v else "no"
    elif isinstance(v, float):
        text = f"{v:.6g}"
    elif isinstance(v, (list, dict)):
        text = json.dumps(v, default=str)
    else:
        text = str(v)
    text = " ".join(text.split())  # one line per row
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _change(a: Any, b: Any) -> str:
    """'+1.23%' of b against a, for two finite numbers that differ."""
    nums = (int, float)
    if (
        isinstance(a, nums)
        and isinstance(b, nums)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a
        and math.isfinite(a)
        and math.isfinite(b)
    ):
        return f"{(b - a) / abs(a):+.2%}"
    return ""


def only_differing(diff: dict) -> dict:
    """The diff with only its differing rows (sections left empty are dropped)."""
    sections = [{**s, "rows": [r for r in s["rows"] if r["differs"]]} for s in diff["sections"]]
    return {**diff, "sections": [s for s in sections if s["rows"]]}


def diff_text(diff: dict, *, only_differences: bool = False) -> str:
    rows = [r for s in diff["sections"] for r in s["rows"]]
    kw = max([len(r["key"]) for r in rows] + [10])
    wa = max([len(_cell(r["a"])) for r in rows] + [len(f"run {diff['a']}")])
    lines = [
        f"Run {diff['a']} vs run {diff['b']}: {diff['differences']} difference(s), marked *",
        f"    {'':<{kw}}  {'run ' + str(diff['a']):<{wa}}  run {diff['b']}",
    ]
    for s in diff["sections"]:
        shown = [r for r in s["rows"] if r["differs"] or not only_differences]
        if not shown:
            continue
        lines.append(f"{s['name'].capitalize()}:")
        for r in shown:
            mark = "*" if r["differs"] else " "
            change = (
                _change(r["a"], r["b"]) if r["differs"] and s["name"] == "final figures" else ""
            )
            line = f"  {mark} {r['key']:<{kw}}  {_cell(r['a']):<{wa}}  {_cell(r['b'])}"
            lines.append(line + (f"  ({change})" if change else ""))
    return "\n".join(line.rstrip() for line in lines)
