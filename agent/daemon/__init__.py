"""The daemon: watch udev for sticks, stage the plan onto them, recover from crashes."""
