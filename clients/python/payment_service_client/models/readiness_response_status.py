from enum import StrEnum


class ReadinessResponseStatus(StrEnum):
    DRAINING = "draining"
    READY = "ready"
    UNAVAILABLE = "unavailable"

    def __str__(self) -> str:
        return str(self.value)
