"""Snow Device Management over the claimed Panorama devices: CreateTask (reboot or unlock),
DescribeTask, DescribeExecution, ListTasks, ListExecutions, CancelTask and ListDevices."""

from __future__ import annotations

import json
from collections.abc import Mapping

from agent.authority import lifecycle as lc
from agent.authority.apierror import ApiError, validation_error
from agent.authority.operation_base import IdempotentRequest, OperationGroup, Params, RequestContext, Response
from agent.authority.paging import SNOW_PAGE, Item, Scope, paginate, with_token
from agent.authority.store import Row, dumps, random_id
from agent.aws.operations import SNOW, SNOW_OPERATIONS


class SnowDeviceManagementOperations(OperationGroup):
    """Snow Device Management: tasks, their executions, managed devices."""

    SERVICE = SNOW
    OPERATIONS = SNOW_OPERATIONS

    def _managed_ids(self) -> list[str]:
        return [row["device_id"] for row in self.store.managed_devices()]

    def create_task(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        targets = p["targets"]
        commands = [name for name in ("reboot", "unlock") if p["command"].get(name) is not None]
        if len(commands) != 1:
            raise validation_error("command must set exactly one of reboot | unlock")
        known = set(self._managed_ids())
        unknown = [t for t in targets if t not in known]
        if unknown:
            raise ApiError(404, "ResourceNotFoundException", f"managed device(s) not found: {', '.join(unknown)}")
        if len(set(targets)) != len(targets):
            raise validation_error("targets must not repeat a device")
        idempotent = IdempotentRequest.of(p, "clientToken")
        task_id = random_id("st-", 16)
        row = self.store.insert_task(
            {
                "task_id": task_id,
                "client_token": idempotent.token,
                "request_hash": idempotent.digest,
                "command": commands[0],
                "description": p.get("description"),
                "tags": dumps(p.get("tags") or {}),
                "targets": json.dumps(targets),
                "region": ctx.region,
                "created": self.clock.timestamp(),
            },
            lambda conn: None,
        )
        idempotent.check_stored(row, "task_id", task_id, "task", "task")
        return {"taskId": row["task_id"], "taskArn": self._task_arn(row)}

    def _task_arn(self, task: Row) -> str:
        return self.arn(SNOW, task["region"], f"task/{task['task_id']}")

    def _task(self, task_id: str) -> Row:
        task = self.store.task(task_id)
        if task is None:
            raise ApiError(404, "ResourceNotFoundException", f"task {task_id} not found")
        return task

    def _phases(self, device_ids: list[str]) -> dict[tuple[str, str], lc.ExecutionPhase]:
        if not device_ids:
            return {}
        return lc.execution_timeline(self.store.executions_on(device_ids), self.clock.timestamp(), self.step)

    def _task_summary(
        self, task: Row, phases: Mapping[tuple[str, str], lc.ExecutionPhase]
    ) -> tuple[str, float | None, float]:
        targets = json.loads(task["targets"])
        own = [phases[(task["task_id"], d)] for d in targets]
        return lc.task_state(task, own, self.clock.timestamp())

    def describe_task(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        task = self._task(p["taskId"])
        targets = json.loads(task["targets"])
        state, completed, updated = self._task_summary(task, self._phases(targets))
        out: Response = {
            "createdAt": lc.to_datetime(task["created"]),
            "lastUpdatedAt": lc.to_datetime(updated),
            "state": state,
            "tags": json.loads(task["tags"]),
            "targets": targets,
            "taskArn": self._task_arn(task),
            "taskId": task["task_id"],
        }
        if completed is not None:
            out["completedAt"] = lc.to_datetime(completed)
        if task["description"] is not None:
            out["description"] = task["description"]
        return out

    def describe_execution(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        task = self._task(p["taskId"])
        device_id = p["managedDeviceId"]
        if device_id not in json.loads(task["targets"]):
            raise ApiError(404, "ResourceNotFoundException", f"task {task['task_id']} has no execution on {device_id}")
        phase = self._phases([device_id])[(task["task_id"], device_id)]
        execution = next(e for e in self.store.executions_of(task["task_id"]) if e["device_id"] == device_id)
        out: Response = {
            "executionId": execution["execution_id"],
            "lastUpdatedAt": lc.to_datetime(phase.last_updated),
            "managedDeviceId": device_id,
            "state": phase.state,
            "taskId": task["task_id"],
        }
        if phase.started is not None:
            out["startedAt"] = lc.to_datetime(phase.started)
        return out

    def list_tasks(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        phases = self._phases(self._managed_ids())
        items = []
        for task in self.store.tasks():
            state, _, _ = self._task_summary(task, phases)
            if p.get("state") and state != p["state"]:
                continue
            items.append(
                {
                    "state": state,
                    "tags": json.loads(task["tags"]),
                    "taskArn": self._task_arn(task),
                    "taskId": task["task_id"],
                    "_key": [task["created"], task["task_id"]],
                }
            )
        return _keyed_page(items, ["ListTasks", p.get("state")], p, "tasks")

    def list_executions(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        task = self._task(p["taskId"])
        targets = json.loads(task["targets"])
        phases = self._phases(targets)
        items = []
        for index, execution in enumerate(self.store.executions_of(task["task_id"])):
            state = phases[(task["task_id"], execution["device_id"])].state
            if p.get("state") and state != p["state"]:
                continue
            items.append(
                {
                    "executionId": execution["execution_id"],
                    "managedDeviceId": execution["device_id"],
                    "state": state,
                    "taskId": task["task_id"],
                    "_key": [index],
                }
            )
        return _keyed_page(items, ["ListExecutions", task["task_id"], p.get("state")], p, "executions")

    def cancel_task(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        task = self._task(p["taskId"])
        state, _, _ = self._task_summary(task, self._phases(json.loads(task["targets"])))
        if state == "IN_PROGRESS":
            self.store.cancel_task(task["task_id"], self.clock.timestamp())
        return {"taskId": task["task_id"]}

    def list_devices(self, ctx: RequestContext, p: Params, defect: str | None = None) -> Response:
        items = [
            {
                "associatedWithJob": row["job_id"],
                "managedDeviceArn": self.arn(SNOW, ctx.region, f"managed-device/{row['device_id']}"),
                "managedDeviceId": row["device_id"],
                "tags": json.loads(row["tags"]),
            }
            for row in self.store.managed_devices()
            if not p.get("jobId") or row["job_id"] == p["jobId"]
        ]
        page, token = paginate(
            items,
            lambda d: [d["managedDeviceId"]],
            ["SnowListDevices", p.get("jobId")],
            p.get("nextToken"),
            p.get("maxResults") or SNOW_PAGE,
        )
        return with_token({"devices": page}, "nextToken", token)


def _keyed_page(items: list[Item], scope: Scope, p: Params, name: str) -> Response:
    """The response listing one page of ``items`` under ``name``, in the order of their ``_key``
    (which the page's items then lose)."""
    page, token = paginate(
        items, lambda item: item["_key"], scope, p.get("nextToken"), p.get("maxResults") or SNOW_PAGE
    )
    for item in page:
        item.pop("_key")
    return with_token({name: page}, "nextToken", token)
