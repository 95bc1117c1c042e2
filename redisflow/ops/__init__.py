"""Operations on what flows left in Redis: dead letters (list, show, replay, purge) and the
numbers of ``redisflow stats``. Data only: ``cli/render.py`` presents them."""

from ..protocol.records import DeadLetter
from .deadletters import DeadLetters
from .stats import Row, Snapshot, collect, registered_sources

__all__ = ["DeadLetter", "DeadLetters", "Row", "Snapshot", "collect", "registered_sources"]
