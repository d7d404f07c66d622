"""The About tab's layout, apart from `app/ui.py` so the page's composition stays short.

Static text: the explanation (`app.about.texts.ABOUT`), the model card's tables and figure, and the
shipped files. `wire()` exists so every tab is composed the same way; it has nothing to connect.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from app import config
from app.about import texts as about


@dataclass
class AboutTab:
    figure: gr.Image | None  # the model card's figure, when the card and its picture are shipped


def build(card) -> AboutTab:
    """The tab's components, in the current Tab context; `card` is the loaded model card
    (`app.about.modelcard.load()`)."""
    gr.Markdown(about.ABOUT)
    gr.Markdown("## The model card\n\n" + card.tables_md(), elem_classes=["card-tables"])
    figure = config.ASSETS / "model_card_crops.png"
    image = None
    if card.present and figure.is_file():
        gr.Markdown("### Where the INT8 error is\n\nThe model card's figure: test-photo crops where "
                    "minmax PTQ differs most from FP32 — input, FP32, PTQ-INT8, QAT-INT8 and the two error "
                    "maps on one colour scale (8-bit levels).")
        image = gr.Image(str(figure), label="Model card figure", show_label=False, format="png", interactive=False)
    files = card.files_md()
    if files:
        gr.Markdown("### Shipped files (`checkpoints/manifest.json`)\n\n" + files)
    return AboutTab(figure=image)


def wire(tab: AboutTab) -> None:
    """Nothing to connect: the About tab has no events."""
