"""The model card (``README.md``) that :meth:`Interlingua.save_pretrained` writes beside the weights: hub
metadata, what the interlingua connects, how to load it, its headline metrics and the command behind them,
and its full config."""

from __future__ import annotations

import json

import yaml


def model_card(system, metrics: dict | None = None, command: str | None = None) -> str:
    """Markdown with YAML front matter for the hub.

    Args:
        system: the :class:`~interlingua.models.system.Interlingua` being saved.
        metrics: headline numbers, e.g. ``{"hybrid smollm2 -> gemma3 F1": 13.7, ...}``; a flat mapping of
            name -> number (or string) is shown as a table, anything else as JSON.
        command: the command line that produced ``metrics``.
    """
    spec = system.model.spec
    shape = spec.interlingua
    front = {"library_name": "interlingua", "tags": ["interlingua", "soft-prompts", "cross-model"],
             "datasets": ["rajpurkar/squad"], "base_model": [m.spec for m in spec.models]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# interlingua: {' + '.join(m.spec for m in spec.models)}", "",
             f"A shared continuous representation (design `{shape.design.value}`, d_inter = {shape.d_inter}, "
             f"conditioning `{shape.conditioning.value}`) that lets these frozen LLMs read each other's prompts. "
             f"Semantic anchor: `{spec.encoder}`. Only the learned modules are stored here "
             f"(fingerprint `{system.model.fingerprint()}`); the frozen models load from their own repositories.",
             "", "## Use", "", "```python", "from interlingua import Interlingua", "",
             'il = Interlingua.from_pretrained("<this folder or hub id>")',
             f'message = il.encode(["Context: …"], sender="{spec.models[0].spec}")',
             f'answers = il.generate(message, receiver="{spec.models[-1].spec}"'
             + (', question=["…?"])' if shape.conditioning.value == "hybrid" else ")"), "```", ""]
    lines += ["## Metrics", ""]
    if not metrics:
        lines += ["No metrics were recorded with these weights; `interlingua eval --checkpoint <folder>` measures "
                  "them (every pair beside its shuffled-z control).", ""]
    elif all(isinstance(v, (int, float, str)) for v in metrics.values()):
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines += [""]
    else:
        lines += ["```json", json.dumps(metrics, indent=2, default=str), "```", ""]
    if command:
        lines += ["Produced by:", "", "```bash", command, "```", ""]
    if system.config is not None:
        from interlingua.config import config_to_dict

        lines += ["## Config", "", "```yaml", yaml.safe_dump(config_to_dict(system.config), sort_keys=False).strip(),
                  "```", ""]
    return "\n".join(lines)
