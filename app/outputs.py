"""Handlers yield named updates — {output name: value}, a name left out stays as it is — and the
Gradio boundary lays them out as the event's list of outputs, in one declared order per event."""
from __future__ import annotations

import gradio as gr


def as_slots(names: tuple[str, ...], update: dict) -> list:
    """`update` as Gradio's list of event outputs in the order of `names` (gr.skip() where absent)."""
    unknown = set(update) - set(names)
    if unknown:
        raise KeyError(f"not an output of this event: {sorted(unknown)}")
    return [update[name] if name in update else gr.skip() for name in names]
