"""ARK as a service of the box: systemd units (ark.deploy.units), rendered by `ark render`."""
