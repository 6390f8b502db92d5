"""The text the language model reads for an item, composed from the data set's declared template.

Ingest writes it to the canonical items' `text` column; a trained model records the template and the attribute
declarations it was composed with (`ItemText`, in its model_config.json), so items it meets later — new items at
evaluation, a variant evaluated on another data set's tables — are composed the way its training items were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from components.dataset import MULTI_VALUE_SEPARATOR, Attribute, DatasetSchema, template_fields

log = logging.getLogger(__name__)


def _text_value(value: object, attr: Attribute | None) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return attr.missing_text if attr else "unknown"
    if attr is not None and attr.kind == "multi_categorical":
        return ", ".join(str(value).split(MULTI_VALUE_SEPARATOR)) if value else attr.missing_text
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class ItemText:
    """A text template and the declarations of the item attributes it names (how each value is written)."""

    template: str
    attributes: dict[str, Attribute]

    @classmethod
    def of(cls, schema: DatasetSchema) -> ItemText:
        fields = template_fields(schema.text_template)
        return cls(schema.text_template, {f: a for f, a in schema.item_attributes.items() if f in fields})

    def compose(self, items: pd.DataFrame) -> list[str]:
        """One text per row of `items` (canonical columns: `title` and the declared attribute names)."""
        fields = template_fields(self.template)
        columns = {f: items[f].tolist() for f in fields}
        return [self.template.format(**{f: _text_value(columns[f][i], self.attributes.get(f)) for f in fields})
                for i in range(len(items))]

    def can_compose(self, items: pd.DataFrame) -> bool:
        return template_fields(self.template) <= set(items.columns)

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template,
                "attributes": {f: a.model_dump(mode="json") for f, a in self.attributes.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemText:
        return cls(data["template"], {f: Attribute.model_validate(a) for f, a in data["attributes"].items()})


def compose_text(items: pd.DataFrame, schema: DatasetSchema) -> list[str]:
    """The text the language model reads for each item, from the declared template."""
    return ItemText.of(schema).compose(items)


def recorded_item_text(items: pd.DataFrame, schema: DatasetSchema) -> ItemText | None:
    """What a model trained on `items` records: the declaration's template when it composes exactly their `text`
    column; None (later items keep the text they come with) when the texts were written another way."""
    declared = ItemText.of(schema)
    if "text" not in items or not declared.can_compose(items):
        return None
    if declared.compose(items) != items["text"].fillna("").astype(str).tolist():
        log.warning("the items' text column is not what dataset.text_template %r composes (ingested under another "
                    "template?): the model keeps the texts as given and records no template", declared.template)
        return None
    return declared


def model_item_texts(items: pd.DataFrame, recorded: dict[str, Any] | None) -> list[str]:
    """The texts a model reads for `items`: composed with its recorded template (see `recorded_item_text`) when
    the rows carry the template's fields, else their `text` column."""
    if recorded:
        item_text = ItemText.from_dict(recorded)
        if item_text.can_compose(items):
            return item_text.compose(items)
    return items["text"].fillna("").astype(str).tolist()
