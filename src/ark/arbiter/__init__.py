"""The GPU arbiter: one owner of every decision about device memory (docs/arbiter.md)."""
