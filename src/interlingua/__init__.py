"""interlingua: one shared continuous representation that conditions several different frozen LLMs."""

__version__ = "0.1.0"
