"""What a worker is told at start. The scaler hands it over explicitly, on stdin."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

from fleet.settings import FleetSettings


@dataclass(frozen=True)
class WorkerSpec:
    settings: FleetSettings
    queue: str
    device_id: str
    device_vendor: str
    cpus: tuple[int, ...]
    worker_id: str

    def to_json(self) -> str:
        """Secrets included: this goes down a pipe to the child, never into argv or logs."""
        data = self.settings.model_dump(mode="json")
        password = self.settings.redis.password
        data["redis"]["password"] = password.get_secret_value() if password is not None else None
        return json.dumps(
            {
                "settings": data,
                "queue": self.queue,
                "device_id": self.device_id,
                "device_vendor": self.device_vendor,
                "cpus": list(self.cpus),
                "worker_id": self.worker_id,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(
            settings=FleetSettings.model_validate(data["settings"]),
            queue=data["queue"],
            device_id=data["device_id"],
            device_vendor=data["device_vendor"],
            cpus=tuple(data.get("cpus") or ()),
            worker_id=data["worker_id"],
        )


def new_worker_id(queue: str, device_id: str) -> str:
    return f"{queue}.{device_id}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
