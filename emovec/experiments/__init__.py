"""Behavioural experiments under steering: activity preferences, blackmail, reward hacking.

Each experiment keeps its samples and results under `RUN_DIR/experiments/<name>/`;
`common` holds what they share.
"""
