"""The dev fleet's config file: a demo pipeline a newcomer can watch pause for a person.

``brief``: summarise and find the keywords of a text (in parallel), detect its language,
wait for someone to approve (``edgefleet pipelines approve RUN review``), then train the
demo model. It runs on the embedded Temporal that ``edgefleet dev`` starts for it.
"""

from __future__ import annotations

from pathlib import Path

DEMO_CONFIG = """\
# Written by `edgefleet dev` (pass --config FILE to use your own).
pipelines:
  brief:
    description: Summarise a text, find its keywords and language, ask a person, then train the demo model.
    input_schema:
      type: object
      properties:
        text: {type: string, minLength: 1, description: The text to brief.}
      required: [text]
    steps:
      - parallel:
          - name: summary
            tool: text.summarize
            arguments: {text: "${input.text}", sentences: 2}
          - name: keywords
            tool: text.keywords
            arguments: {text: "${input.text}", top: 5}
      - name: language
        tool: text.detect_language
        arguments: {text: "${input.text}"}
      - name: review
        approval:
          timeout_s: 3600
          prompt: >-
            Train on this ${steps.language.structuredContent.language} text about
            ${steps.keywords.structuredContent.keywords.0.word}?
            Summary: ${steps.summary.structuredContent.summary}
      - name: train
        tool: trainer.train
        arguments: {epochs: 60}
        timeout_s: 600
"""


def write_demo_config(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_CONFIG)
    return path
