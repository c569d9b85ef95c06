"""The live layer: a streaming monitor (per-token readout, alerts, guard, traces) and the server around it."""
