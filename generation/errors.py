"""One base for every failure the user can fix (bad recipe, missing file, refused publish, ...).

The CLI prints a PersonaError as one line and exits 2; any other exception is a bug in persona and
keeps its traceback. Lives in `generation` because both `generation` and `builder` raise it and
`generation` never imports `builder`.
"""


class PersonaError(Exception):
    """A one-line, user-facing reason; `persona --debug` (or PERSONA_DEBUG=1) shows the traceback too."""
