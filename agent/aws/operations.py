"""The operations panostage calls and the local authority answers, by service: the one list."""

from __future__ import annotations

PANORAMA = "panorama"
SNOW = "snow-device-management"

PANORAMA_OPERATIONS = (
    "ProvisionDevice",
    "DescribeDevice",
    "ListDevices",
    "DeleteDevice",
    "CreateJobForDevices",
    "DescribeDeviceJob",
    "ListDevicesJobs",
    "CreatePackageImportJob",
    "DescribePackageImportJob",
)
SNOW_OPERATIONS = (
    "CreateTask",
    "DescribeTask",
    "DescribeExecution",
    "ListTasks",
    "ListExecutions",
    "CancelTask",
    "ListDevices",
)
BY_SERVICE = {PANORAMA: PANORAMA_OPERATIONS, SNOW: SNOW_OPERATIONS}
