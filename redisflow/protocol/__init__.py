"""The wire format, in one place: the envelope of list and sorted-set items and the payload
codec (``envelope``), the priority score encoding (``priority``), the Lua scripts and their
typed calls (``scripts``), and helpers to read Redis's replies (``replies``)."""
