"""`guardproxy audit URL`: the production checklist tested from outside, against a live API.

Each probe sends a few safe, bounded requests (GET/HEAD/OPTIONS/TRACE unless allowed more),
records what came back as `Exchange` evidence, and judges it with a pure function, so every
decision can be unit-tested on recorded evidence. The runner bounds the whole audit in time and
requests; the report grades it; the renderers print it as text, JSON or Markdown.

Modules: `evidence` (what was seen), `session` and `wire` (the bounded client), `probes/` (one
module per group of checklist items), `checks` (the catalogue and the fixes), `report` (score
and grade), `render` (text, JSON, Markdown), `runner` (the deadline), `command` (the CLI).
Nothing is imported here, so the CLI can build its parser without loading httpx.
"""
