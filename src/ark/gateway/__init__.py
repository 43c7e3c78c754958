"""The OpenAI-compatible API gateway (port 4000): the request wrapper every API component uses
(:mod:`ark.gateway.front`), the OpenAI API, the management API and health as components of
:mod:`ark.runtime`, and what they share (budgets, rate limits, allotments, metrics, the access log)."""
