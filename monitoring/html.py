"""The project's small HTML page toolkit (one definition, in `components.html_report`), as monitoring uses it."""

from components.html_report import figure_png, fmt, page, table

__all__ = ["figure_png", "fmt", "page", "table"]
