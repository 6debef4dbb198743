from enum import StrEnum


class HealthCheckStatus(StrEnum):
    DISABLED = "disabled"
    DOWN = "down"
    UP = "up"

    def __str__(self) -> str:
        return str(self.value)
