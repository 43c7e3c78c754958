"""`ark doctor`: the deployment checklist as checks (ark.doctor.checks)."""
